//! Snapshots, log compaction and InstallSnapshot on real `raftkv start`
//! processes (see `common`), with a small `--snapshot-threshold`:
//!
//! * a follower stopped while the cluster writes more than 3× the
//!   threshold comes back through InstallSnapshot and ends up with exactly
//!   the leader's data;
//! * so does a follower whose data dir was wiped (a brand-new empty node
//!   with the same id);
//! * a follower killed with SIGKILL in the middle of receiving a large
//!   snapshot restarts on its old state and catches up.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const FORM: Duration = Duration::from_secs(20);
const THRESHOLD: u64 = 50;

fn opts() -> Opts {
    Opts {
        extra: vec!["--snapshot-threshold".into(), THRESHOLD.to_string()],
        ..Opts::default()
    }
}

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

/// PUT through node `i`, retrying (bounded) until it is acknowledged.
async fn put_ok(client: &reqwest::Client, base: &str, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = put_at(client, base, key, value, None).await {
            return;
        }
        assert!(Instant::now() < deadline, "PUT {key} never succeeded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn delete_ok(client: &reqwest::Client, base: &str, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client
            .delete(format!("{base}/kv/{}", encode_key(key)))
            .send()
            .await;
        if let Ok(r) = r {
            if matches!(r.status().as_u16(), 200 | 404) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "DELETE {key} never succeeded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` PUTs of `prefix{i}` with values of `len` bytes, `parallel` at a time.
async fn put_many(c: &Cluster, i: usize, prefix: &str, n: usize, len: usize, parallel: usize) {
    let base = c.url(i);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (client, base, next) = (c.client.clone(), base.clone(), next.clone());
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= n {
                    return;
                }
                let mut value = format!("{prefix}{k}=");
                while value.len() < len {
                    value.push((b'a' + (k + value.len()) as u8 % 26) as char);
                }
                put_ok(&client, &base, &format!("{prefix}{k:05}"), &value).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Waits until node `f`'s own listing equals node `leader`'s, both read
/// from the local state machines.
async fn wait_same_listing(c: &Cluster, leader: usize, f: usize, within: Duration) -> usize {
    let expected = list_all(&c.client, &c.url(leader), true).await.unwrap();
    let (client, url) = (c.client.clone(), c.url(f));
    let mut last = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        if let Ok(got) = list_all(&client, &url, true).await {
            if got == expected {
                return expected.len();
            }
            last = got;
        }
        if Instant::now() > deadline {
            panic!(
                "{} never listed the leader's {} items (it has {})",
                c.nodes[f].name,
                expected.len(),
                last.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every running node has applied the leader's commit index.
async fn wait_applied_everywhere(c: &mut Cluster, leader: usize) {
    let target = field(&status(c, leader).await.unwrap(), "commit_index");
    let running: Vec<usize> = (0..c.nodes.len())
        .filter(|&i| c.nodes[i].is_running())
        .collect();
    for i in running {
        let c = &*c;
        eventually(
            FORM,
            "every node applying the commit index",
            || async move {
                let st = status(c, i).await?;
                (field(&st, "applied_index") >= target).then_some(())
            },
        )
        .await;
    }
}

async fn wait_log_line(c: &Cluster, i: usize, line: &str, within: Duration) {
    let node = &c.nodes[i];
    eventually(within, line, || {
        let found = node.log().contains(line);
        async move { found.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_follower_catches_up_through_install_snapshot() {
    let mut c = Cluster::start(3, &opts());
    let leader = c.wait_for_leader(FORM).await;
    let base = c.url(leader);
    put_many(&c, leader, "a/", 40, 20, 4).await;
    wait_applied_everywhere(&mut c, leader).await;
    let f = (leader + 1) % 3;
    let before = status(&c, f).await.unwrap();
    let f_last = field(&before, "last_log_index");
    assert!(c.nodes[f].terminate(Duration::from_secs(10)).success());

    // Well over 3× the threshold: overwrites, new keys and deletions.
    for round in 0..4 {
        for k in 0..40 {
            put_ok(
                &c.client,
                &base,
                &format!("a/{k:05}"),
                &format!("r{round}-{k}"),
            )
            .await;
        }
    }
    put_many(&c, leader, "b/", 60, 50, 4).await;
    for k in (0..40).step_by(3) {
        delete_ok(&c.client, &base, &format!("a/{k:05}")).await;
    }
    let st = status(&c, leader).await.unwrap();
    let snap = field(&st, "snapshot_index");
    assert!(
        snap > f_last + THRESHOLD,
        "the leader compacted its log past the follower ({f_last}): {st}"
    );
    assert_eq!(field(&st, "first_log_index"), snap + 1, "{st}");
    assert!(field(&st, "last_log_index") >= snap, "{st}");
    assert!(field(&st, "last_log_index") - f_last > 3 * THRESHOLD);

    c.nodes[f].start();
    wait_log_line(&c, f, "installed snapshot from the leader", FORM).await;
    let n = wait_same_listing(&c, leader, f, FORM).await;
    assert_eq!(n, 40 - 14 + 60);
    let st = status(&c, f).await.unwrap();
    assert!(field(&st, "snapshot_index") > f_last, "{st}");
    assert!(field(&st, "first_log_index") > f_last + 1, "{st}");
    assert!(
        st["snapshot_receiving"].is_null(),
        "transfer still shown: {st}"
    );
    // The leader logged the transfer too.
    assert!(c.nodes[leader].log().contains("snapshot delivered"));

    // Writes keep flowing to the caught-up follower through the log.
    put_ok(&c.client, &base, "after", "x").await;
    let (client, url) = (c.client.clone(), c.url(f));
    eventually(FORM, "the follower applying a new write", || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let (s, v) = get_at(&client, &url, "after", true).await.ok()?;
            (s == 200 && v["value"] == "x").then_some(())
        }
    })
    .await;
}

/// Wipes follower `f`'s data dir and restarts it as a brand-new empty node
/// with the same id; returns once it is running.
async fn wipe_and_restart(c: &mut Cluster, f: usize) {
    c.nodes[f].kill9();
    std::fs::remove_dir_all(&c.nodes[f].data_dir).unwrap();
    c.nodes[f].start();
    let (client, url) = (c.client.clone(), c.url(f));
    eventually(FORM, "the wiped node answering", || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client.get(format!("{url}/health")).send().await.ok()?;
            (r.status().as_u16() == 200).then_some(())
        }
    })
    .await;
}

/// A brand-new empty node with a member's id (its disk was replaced).
///
/// The leader it had before still believes the node holds everything up
/// to its old match index, and the consensus core never lowers a match
/// index (see `wiped_follower_catches_up_under_the_same_leader`), so here
/// the leader is restarted as well: the new leader's fresh progress probes
/// the empty node down to the compacted prefix and sends it the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_follower_catches_up_from_an_empty_data_dir() {
    let mut c = Cluster::start(3, &opts());
    let leader = c.wait_for_leader(FORM).await;
    put_many(&c, leader, "w/", 250, 100, 8).await;
    wait_applied_everywhere(&mut c, leader).await;
    let st = status(&c, leader).await.unwrap();
    assert!(field(&st, "snapshot_index") >= 3 * THRESHOLD, "{st}");

    let f = (leader + 2) % 3;
    wipe_and_restart(&mut c, f).await;
    assert!(c.nodes[leader].terminate(Duration::from_secs(10)).success());
    c.nodes[leader].start();
    let leader = c.wait_for_leader(FORM).await;
    assert_ne!(leader, f, "the empty node cannot win an election");
    wait_log_line(&c, f, "installed snapshot from the leader", FORM).await;
    let n = wait_same_listing(&c, leader, f, FORM).await;
    assert_eq!(n, 250);
    let st = status(&c, f).await.unwrap();
    assert!(field(&st, "snapshot_index") >= 3 * THRESHOLD, "{st}");
    // And it keeps up with new writes through the log.
    put_many(&c, leader, "x/", 20, 10, 4).await;
    assert_eq!(wait_same_listing(&c, leader, f, FORM).await, 270);
}

/// The same under a leader that stays in office: the leader still holds the
/// wiped peer's old match index, and must lower it when the peer reports a
/// log shorter than that, then fall back to InstallSnapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_follower_catches_up_under_the_same_leader() {
    let mut c = Cluster::start(3, &opts());
    let leader = c.wait_for_leader(FORM).await;
    put_many(&c, leader, "w/", 250, 100, 8).await;
    wait_applied_everywhere(&mut c, leader).await;
    let f = (leader + 2) % 3;
    wipe_and_restart(&mut c, f).await;
    wait_log_line(&c, f, "installed snapshot from the leader", FORM).await;
    assert_eq!(wait_same_listing(&c, leader, f, FORM).await, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_killed_while_receiving_a_snapshot_recovers() {
    let mut c = Cluster::start(3, &opts());
    let leader = c.wait_for_leader(FORM).await;
    put_many(&c, leader, "old/", 100, 100, 8).await;
    wait_applied_everywhere(&mut c, leader).await;
    let f = (leader + 1) % 3;
    c.nodes[f].kill9();
    // A snapshot of several MiB: thousands of 1 KiB values.
    put_many(&c, leader, "big/", 6000, 1024, 16).await;

    c.nodes[f].start();
    // Kill it as soon as it reports a transfer in progress.
    let (client, url) = (c.client.clone(), c.url(f));
    let progress = eventually(FORM, "the follower receiving a snapshot", || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client
                .get(format!("{url}/cluster/status"))
                .send()
                .await
                .ok()?;
            let v: Value = r.json().await.ok()?;
            let p = v["snapshot_receiving"].clone();
            (!p.is_null()).then_some(p)
        }
    })
    .await;
    c.nodes[f].kill9();
    let log = c.nodes[f].log();
    assert!(log.contains("receiving snapshot"), "{log}");
    assert!(
        !log.contains("installed snapshot"),
        "the install finished before the kill ({progress})"
    );
    assert!(progress["bytes"].as_u64().unwrap() > 0, "{progress}");

    c.nodes[f].start();
    wait_log_line(&c, f, "installed snapshot from the leader", FORM).await;
    let n = wait_same_listing(&c, leader, f, Duration::from_secs(60)).await;
    assert_eq!(n, 6100);
    // Diagnostics (shown with --nocapture): the transfers as logged.
    for i in [leader, f] {
        for line in c.nodes[i].log().lines() {
            if line.contains("snapshot") && !line.contains("snapshot taken") {
                eprintln!("{}: {line}", c.nodes[i].name);
            }
        }
    }
}
