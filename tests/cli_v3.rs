//! The etcd v3 commands of the `raftkv` command line against a real
//! three-node cluster: `get --rev`, `list`'s range options, `delete
//! --prefix`, `txn` on both branches, `compact` and reads below it, and
//! `watch` receiving the changes other CLI calls make.
//!
//! Every process a test starts is killed on drop; waits poll a condition
//! against a deadline.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::{Cluster, Opts};

const BIN: &str = env!("CARGO_BIN_EXE_raftkv");

/// A started process, killed and reaped on drop if still running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Proc {
    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn raftkv(nodes: &str) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("RAFTKV_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG").env("RAFTKV_NODES", nodes);
    cmd
}

/// Runs a client command to completion with `input` on stdin.
fn run(nodes: &str, args: &[&str], input: &[u8]) -> Out {
    use std::io::Write;
    let mut cmd = raftkv(nodes);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn raftkv");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut proc = Proc(child);
    let code = proc.wait_exit(Duration::from_secs(40));
    assert!(
        proc.0.try_wait().ok().flatten().is_some(),
        "{args:?} did not finish"
    );
    let _ = writer.join();
    Out {
        code,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn cli(nodes: &str, args: &[&str]) -> Out {
    run(nodes, args, b"")
}

/// Runs a command that must succeed; returns its stdout.
fn ok(nodes: &str, args: &[&str]) -> String {
    let out = cli(nodes, args);
    assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
    out.stdout
}

/// The revision of an `OK (index N)` line.
fn index_of(out: &str) -> i64 {
    let line = out.lines().next().unwrap_or_default();
    line.strip_prefix("OK (index ")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an OK line: {out:?}"))
}

fn put(nodes: &str, key: &str, value: &str) -> i64 {
    index_of(&ok(nodes, &["put", key, value]))
}

/// Starts `raftkv watch ARGS`, its stdout lines sent to the receiver.
fn spawn_watch(nodes: &str, args: &[&str]) -> (Proc, mpsc::Receiver<String>) {
    let mut cmd = raftkv(nodes);
    cmd.arg("watch")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn raftkv watch");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Proc(child), rx)
}

/// Collects `n` lines from a watch, within a deadline.
fn lines(rx: &mpsc::Receiver<String>, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => out.push(l),
            Err(e) => panic!("only {out:?} after waiting: {e}"),
        }
    }
    out
}

async fn cluster() -> (Cluster, String) {
    let mut c = Cluster::start(3, &Opts::default());
    c.wait_for_leader(Duration::from_secs(20)).await;
    let urls = (0..c.nodes.len())
        .map(|i| c.url(i))
        .collect::<Vec<_>>()
        .join(",");
    (c, urls)
}

#[tokio::test]
async fn v3_commands_end_to_end() {
    let (_cluster, n) = cluster().await;
    let n = n.as_str();
    let r1 = put(n, "user/1", "ann");
    let r2 = put(n, "user/2", "bob");
    let r3 = put(n, "user/1", "ann2");
    let r4 = put(n, "a", "1");
    let r5 = put(n, "z", "26");
    // Each write created exactly the next revision.
    assert_eq!(vec![r2, r3, r4, r5], vec![r1 + 1, r1 + 2, r1 + 3, r1 + 4]);

    // get --rev: the past, and the index is the mod revision.
    assert_eq!(
        ok(n, &["get", "user/1", "--rev", &r1.to_string()]),
        "user/1 = ann\n"
    );
    assert_eq!(
        ok(n, &["get", "user/1", "--rev", &r2.to_string(), "--index"]),
        format!("user/1 = ann (index {r1})\n")
    );
    assert_eq!(
        ok(n, &["get", "user/1", "--index"]),
        format!("user/1 = ann2 (index {r3})\n")
    );
    let absent = cli(n, &["get", "user/2", "--rev", &r1.to_string()]);
    assert_eq!(absent.code, Some(1), "{absent:?}");
    assert!(absent.stderr.contains("key not found"), "{absent:?}");
    let future = cli(n, &["get", "user/1", "--rev", "100000"]);
    assert_eq!(future.code, Some(2), "{future:?}");
    assert!(
        future
            .stderr
            .contains("required revision is a future revision"),
        "{future:?}"
    );

    // list: the original form, then every range option.
    assert_eq!(
        ok(n, &["list", "--prefix", "user/"]),
        "user/1 = ann2\nuser/2 = bob\n"
    );
    assert_eq!(
        ok(n, &["list", "--prefix", "user/", "--rev", &r2.to_string()]),
        "user/1 = ann\nuser/2 = bob\n"
    );
    assert_eq!(
        ok(n, &["list", "--prefix", "user/", "--keys-only"]),
        "user/1\nuser/2\n"
    );
    assert_eq!(ok(n, &["list", "--count-only"]), "4\n");
    assert_eq!(
        ok(
            n,
            &[
                "list",
                "--prefix",
                "user/",
                "--count-only",
                "--rev",
                &r1.to_string()
            ]
        ),
        "1\n"
    );
    assert_eq!(
        ok(
            n,
            &[
                "list",
                "--sort-by",
                "mod",
                "--order",
                "descend",
                "--limit",
                "2"
            ]
        ),
        "z = 26\na = 1\n"
    );
    assert_eq!(
        ok(n, &["list", "--sort-by", "value", "--keys-only"]),
        "a\nz\nuser/1\nuser/2\n"
    );
    assert_eq!(
        ok(n, &["list", "--from", "b", "--to", "z"]),
        "user/1 = ann2\nuser/2 = bob\n"
    );
    assert_eq!(
        ok(n, &["list", "--from", "user/2"]),
        "user/2 = bob\nz = 26\n"
    );
    assert_eq!(
        ok(n, &["list", "--min-mod-rev", &r3.to_string()]),
        "a = 1\nuser/1 = ann2\nz = 26\n"
    );
    assert_eq!(
        ok(
            n,
            &["list", "--max-create-rev", &r2.to_string(), "--keys-only"]
        ),
        "user/1\nuser/2\n"
    );
    assert_eq!(
        ok(n, &["list", "--prefix", "user/", "--limit", "1"]),
        "user/1 = ann2\n"
    );

    // txn: the success branch, then the same compare fails.
    let text = format!("mod(\"user/1\") = \"{r3}\"\n\nput user/1 ann3\nget user/2\n\nget user/1\n");
    let t = run(n, &["txn"], text.as_bytes());
    assert_eq!(t.code, Some(0), "{t:?}");
    assert_eq!(t.stdout, "SUCCESS\n\nOK\n\nuser/2\nbob\n");
    let r6 = r5 + 1;
    assert_eq!(
        ok(n, &["get", "user/1", "--index"]),
        format!("user/1 = ann3 (index {r6})\n")
    );
    let t = run(n, &["txn"], text.as_bytes());
    assert_eq!(t.code, Some(0), "{t:?}");
    assert_eq!(t.stdout, "FAILURE\n\nuser/1\nann3\n");
    // A failed compare created no revision.
    assert_eq!(put(n, "a", "2"), r6 + 1);
    let r7 = r6 + 1;
    // JSON in, JSON out.
    let body = br#"{"compare":[{"key":"a","target":"value","result":"=","value":"2"}],
        "success":[{"put":{"key":"b","value":"x","prev_kv":true}}],"failure":[]}"#;
    let t = run(n, &["txn", "--json"], body);
    assert_eq!(t.code, Some(0), "{t:?}");
    let v: serde_json::Value = serde_json::from_str(t.stdout.trim()).expect("JSON answer");
    assert_eq!(v["succeeded"], true, "{v}");
    assert_eq!(v["index"], r7 + 1, "{v}");
    assert_eq!(v["header"]["revision"], r7 + 1, "{v}");
    assert_eq!(v["responses"][0], serde_json::json!({"put": {}}), "{v}");
    let bad = run(n, &["txn"], b"nonsense(\"k\") = 1\n");
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("line 1"), "{bad:?}");

    // delete --prefix, with and without the deleted records.
    put(n, "tmp/1", "t1");
    let before_delete = put(n, "tmp/2", "t2");
    assert_eq!(
        ok(n, &["delete", "--prefix", "tmp/", "--prev-kv"]),
        format!(
            "deleted 2 (index {})\ntmp/1 = t1\ntmp/2 = t2\n",
            before_delete + 1
        )
    );
    assert_eq!(ok(n, &["list", "--prefix", "tmp/"]), "");
    assert_eq!(
        ok(n, &["delete", "--prefix", "tmp/"]),
        format!("deleted 0 (index {})\n", before_delete + 1)
    );
    // The single-key forms keep their contract.
    let gone = cli(n, &["delete", "nope", "--prev-kv"]);
    assert_eq!(gone.code, Some(1), "{gone:?}");
    let r_b = before_delete + 2;
    assert_eq!(put(n, "b", "y"), r_b);
    assert_eq!(
        ok(n, &["delete", "b", "--prev-kv"]),
        format!("OK (index {})\nb = y\n", r_b + 1)
    );

    // compact: history below it is gone, at and above it is kept.
    assert_eq!(
        ok(n, &["compact", &r3.to_string()]),
        format!("compacted revision {r3}\n")
    );
    for args in [
        vec!["get", "user/1", "--rev", &*r1.to_string()],
        vec!["list", "--rev", &*r2.to_string()],
        vec!["watch", "--prefix", "user/", "--rev", &*r1.to_string()],
    ]
    .iter()
    {
        let out = cli(n, args);
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("required revision has been compacted"),
            "{args:?}: {out:?}"
        );
    }
    assert_eq!(
        ok(n, &["get", "user/1", "--rev", &r3.to_string()]),
        "user/1 = ann2\n"
    );
    let again = cli(n, &["compact", &r3.to_string()]);
    assert_eq!(again.code, Some(2), "{again:?}");
}

#[tokio::test]
async fn watch_prints_the_changes_other_commands_make() {
    let (_cluster, n) = cluster().await;
    let n = n.as_str();
    let start = put(n, "other", "x") + 1;
    // From a revision on: deterministic whatever the watch's start-up time.
    let (mut w, rx) = spawn_watch(
        n,
        &[
            "--prefix",
            "w/",
            "--rev",
            &start.to_string(),
            "--prev-kv",
            "--count",
            "3",
        ],
    );
    assert_eq!(put(n, "w/1", "x"), start);
    put(n, "unwatched", "u");
    assert_eq!(put(n, "w/1", "y"), start + 2);
    assert_eq!(index_of(&ok(n, &["delete", "w/1"])), start + 3);
    let got = lines(&rx, 3);
    assert_eq!(
        got,
        vec![
            format!("PUT w/1 = x (rev {start})"),
            format!("PUT w/1 = y (rev {}, prev: x)", start + 2),
            format!("DELETE w/1 (rev {}, prev: y)", start + 3),
        ]
    );
    assert_eq!(
        w.wait_exit(Duration::from_secs(20)),
        Some(0),
        "--count 3 exits 0"
    );

    // --json replays history as JSON events, one per line.
    let (mut j, rx) = spawn_watch(
        n,
        &["w/1", "--rev", &start.to_string(), "--json", "--count", "2"],
    );
    let got = lines(&rx, 2);
    let events: Vec<serde_json::Value> = got
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(events[0]["type"], "put");
    assert_eq!(events[0]["kv"]["value"], "x");
    assert_eq!(events[0]["kv"]["mod_revision"], start);
    assert_eq!(events[1]["kv"]["value"], "y");
    assert_eq!(events[1]["kv"]["version"], 2);
    assert_eq!(j.wait_exit(Duration::from_secs(20)), Some(0));

    // Without --count it runs until interrupted; Ctrl-C exits 0. Puts are
    // repeated until one shows, since a watch without --rev starts at the
    // next change after it is set up.
    let (mut live, rx) = spawn_watch(n, &["live"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        assert!(Instant::now() < deadline, "the live watch printed nothing");
        put(n, "live", "v");
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            break l;
        }
    };
    assert!(line.starts_with("PUT live = v (rev "), "{line}");
    // SAFETY: kill(2) on our own unreaped child.
    unsafe {
        libc::kill(live.0.id() as i32, libc::SIGINT);
    }
    assert_eq!(live.wait_exit(Duration::from_secs(10)), Some(0));
}
