//! The `raftkv` command line against real node processes on loopback ports:
//! output formats and exit codes of the client commands, `start`'s
//! configuration by flags and environment and its signal handling, and
//! `local-cluster` starting, recovering and stopping.
//!
//! Every process a test starts is owned by a guard that kills it on drop, so
//! a failing test leaves nothing running. Waits poll a condition against a
//! deadline.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::{free_ports, Cluster, Opts};

const BIN: &str = env!("CARGO_BIN_EXE_raftkv");

/// A started process, killed (SIGKILL) and reaped on drop if still running.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the exit, up to `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            eprintln!("cleanup: killing {} (pid {})", self.name, self.child.id());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A command for the binary with no RAFTKV_* or RUST_LOG inherited from the
/// test's own environment.
fn raftkv() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("RAFTKV_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

/// What a finished command printed.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs a command to completion, killing it if it exceeds `limit`.
fn run_with_limit(mut cmd: Command, limit: Duration) -> Out {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn raftkv");
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
    let mut proc = Proc {
        child,
        name: format!("{cmd:?}"),
    };
    let status = proc.wait_exit(limit);
    assert!(status.is_some(), "{cmd:?} did not finish within {limit:?}");
    Out {
        code: status.unwrap().code(),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// Runs a command with `input` on its standard input.
fn run_with_stdin(mut cmd: Command, input: &[u8]) -> Out {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn raftkv");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // A writer thread: a command that does not read stdin must not block
    // the test on a full pipe.
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
    let mut proc = Proc {
        child,
        name: format!("{cmd:?}"),
    };
    let status = proc.wait_exit(Duration::from_secs(40));
    assert!(status.is_some(), "{cmd:?} did not finish");
    let _ = writer.join();
    Out {
        code: status.unwrap().code(),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// Runs a client command against `nodes` (through RAFTKV_NODES).
fn cli(nodes: &str, args: &[&str]) -> Out {
    let mut cmd = raftkv();
    cmd.args(args).env("RAFTKV_NODES", nodes);
    run_with_limit(cmd, Duration::from_secs(40))
}

/// A base port with `n` free consecutive ports after it (local-cluster
/// takes a base port, not a list).
fn free_consecutive_ports(n: u16) -> u16 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let seed = u64::from(std::process::id()) ^ u64::from(now.subsec_nanos());
    for i in 0..500u64 {
        // Below Linux's ephemeral range (32768+), where other tests' free
        // ports and every outgoing connection's local port come from.
        let base = 20_000 + ((seed.wrapping_mul(7919) + i * 97) % 12_000) as u16;
        let held: Vec<_> = (0..n)
            .map_while(|k| TcpListener::bind(("127.0.0.1", base + k)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
    panic!("no {n} consecutive free ports found");
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Polls `f` until it returns `Some`, or panics after `limit`.
fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A three-node cluster (the shared harness) with a leader elected.
async fn cluster() -> (Cluster, usize) {
    let mut c = Cluster::start(3, &Opts::default());
    let leader = c.wait_for_leader(Duration::from_secs(20)).await;
    (c, leader)
}

fn urls(c: &Cluster) -> String {
    (0..c.nodes.len())
        .map(|i| c.url(i))
        .collect::<Vec<_>>()
        .join(",")
}

fn index_of(ok_line: &str) -> u64 {
    let line = ok_line.trim();
    let n = line
        .strip_prefix("OK (index ")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not an OK line: {line:?}"));
    n.parse().unwrap()
}

#[tokio::test]
async fn client_commands_print_the_contract_formats() {
    let (mut c, _) = cluster().await;
    let nodes = urls(&c);

    let put = cli(&nodes, &["put", "greeting", "hello world"]);
    assert_eq!(put.code, Some(0), "{put:?}");
    let first = index_of(&put.stdout);
    assert!(first > 0);

    let get = cli(&nodes, &["get", "greeting"]);
    assert_eq!(
        (get.code, get.stdout.as_str()),
        (Some(0), "greeting = hello world\n")
    );

    // Values and keys that look like flags, contain '/', spaces, '=' or '%'.
    let odd_key = "dir/a b=%41";
    let put = cli(&nodes, &["put", odd_key, "-5"]);
    assert_eq!(put.code, Some(0), "{put:?}");
    let get = cli(&nodes, &["get", odd_key, "--index"]);
    assert_eq!(
        get.stdout,
        format!("{odd_key} = -5 (index {})\n", index_of(&put.stdout))
    );

    // Missing key: message on stderr, nothing on stdout, exit 1.
    let get = cli(&nodes, &["get", "no-such-key"]);
    assert_eq!(get.code, Some(1), "{get:?}");
    assert!(get.stdout.is_empty());
    assert!(get.stderr.contains("no-such-key"), "{get:?}");

    // Delete: OK with a later index; then the key is gone (exit 1 again).
    let del = cli(&nodes, &["delete", "greeting"]);
    assert_eq!(del.code, Some(0), "{del:?}");
    assert!(index_of(&del.stdout) > first);
    let del = cli(&nodes, &["delete", "greeting"]);
    assert_eq!(del.code, Some(1), "{del:?}");
    assert!(del.stdout.is_empty() && !del.stderr.is_empty());
    assert_eq!(cli(&nodes, &["get", "greeting"]).code, Some(1));

    // list: sorted "KEY = VALUE" lines, filtered by prefix.
    for (k, v) in [
        ("user/2", "bob"),
        ("user/1", "alice"),
        ("userx", "no"),
        ("admin", "eve"),
    ] {
        assert_eq!(cli(&nodes, &["put", k, v]).code, Some(0));
    }
    let list = cli(&nodes, &["list", "--prefix", "user/"]);
    assert_eq!(list.code, Some(0), "{list:?}");
    assert_eq!(list.stdout, "user/1 = alice\nuser/2 = bob\n");
    let all = cli(&nodes, &["list"]);
    let keys: Vec<&str> = all
        .stdout
        .lines()
        .map(|l| l.split(" = ").next().unwrap())
        .collect();
    assert_eq!(keys, vec!["admin", odd_key, "user/1", "user/2", "userx"]);
    let empty = cli(&nodes, &["list", "--prefix", "nothing-here/"]);
    assert_eq!((empty.code, empty.stdout.as_str()), (Some(0), ""));

    // Compare-and-swap: 0 = create only; mismatch exits 1 and changes nothing.
    let created = cli(&nodes, &["put", "counter", "1", "--cas", "0"]);
    assert_eq!(created.code, Some(0), "{created:?}");
    let again = cli(&nodes, &["put", "counter", "9", "--cas", "0"]);
    assert_eq!(again.code, Some(1), "{again:?}");
    let idx = index_of(&created.stdout).to_string();
    // The message names what was expected and what is there.
    assert!(
        again.stderr.contains(&format!(
            "precondition failed: key counter was expected at index 0 (absent), but it is at index {idx}"
        )),
        "{again:?}"
    );
    let swapped = cli(&nodes, &["put", "counter", "2", "--cas", &idx]);
    assert_eq!(swapped.code, Some(0), "{swapped:?}");
    let stale_del = cli(&nodes, &["delete", "counter", "--cas", &idx]);
    assert_eq!(stale_del.code, Some(1), "{stale_del:?}");
    let now = index_of(&swapped.stdout);
    assert!(
        stale_del.stderr.contains(&format!(
            "was expected at index {idx}, but it is at index {now}"
        )),
        "{stale_del:?}"
    );
    assert_eq!(cli(&nodes, &["get", "counter"]).stdout, "counter = 2\n");

    // put --file: a file's contents byte for byte (newlines, quotes), up to
    // exactly 1 MiB; `-` reads standard input.
    let dir = tempfile::tempdir().unwrap();
    let text = "line 1\n\"quoted\" line 2\n\ttab, ключ\n";
    let path = dir.path().join("value.txt");
    std::fs::write(&path, text).unwrap();
    let put = cli(
        &nodes,
        &["put", "from-file", "--file", path.to_str().unwrap()],
    );
    assert_eq!(put.code, Some(0), "{put:?}");
    let get = cli(&nodes, &["get", "from-file"]);
    assert_eq!(get.stdout, format!("from-file = {text}\n"));
    let max = dir.path().join("max.txt");
    std::fs::write(&max, "m".repeat(1 << 20)).unwrap();
    let put = cli(&nodes, &["put", "max", "--file", max.to_str().unwrap()]);
    assert_eq!(put.code, Some(0), "{put:?}");
    let get = cli(&nodes, &["get", "max"]);
    assert_eq!(get.stdout.len(), "max = ".len() + (1 << 20) + 1);
    let mut cmd = raftkv();
    cmd.args(["put", "from-stdin", "--file", "-"])
        .env("RAFTKV_NODES", &nodes);
    let put = run_with_stdin(cmd, b"piped\nvalue\n");
    assert_eq!(put.code, Some(0), "{put:?}");
    let get = cli(&nodes, &["get", "from-stdin"]);
    assert_eq!(get.stdout, "from-stdin = piped\nvalue\n\n");

    // Through a single follower only: it forwards.
    let leader = c.wait_for_leader(Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    let put = cli(&c.url(follower), &["put", "via-follower", "yes"]);
    assert_eq!(put.code, Some(0), "{put:?}");
    let get = cli(&c.url(follower), &["get", "via-follower"]);
    assert_eq!(get.stdout, "via-follower = yes\n");
    // --nodes before the subcommand works too.
    let mut cmd = raftkv();
    cmd.args([
        "--nodes",
        &c.url(follower),
        "get",
        "via-follower",
        "--stale",
    ]);
    let get = run_with_limit(cmd, Duration::from_secs(30));
    assert_eq!(get.stdout, "via-follower = yes\n", "{get:?}");
}

#[tokio::test]
async fn status_and_leader_describe_every_node() {
    let (mut c, leader) = cluster().await;
    let nodes = urls(&c);
    let id = |i: usize| c.nodes[i].name.clone();

    let out = cli(&nodes, &["leader"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, format!("{} {}\n", id(leader), c.url(leader)));
    let json: serde_json::Value =
        serde_json::from_str(&cli(&nodes, &["leader", "--json"]).stdout).unwrap();
    assert_eq!(json["leader_id"], id(leader));

    // Wait until every node knows the leader, then check the table.
    let table = eventually(Duration::from_secs(10), "all nodes in status", || {
        let out = cli(&nodes, &["status"]);
        assert_eq!(out.code, Some(0), "{out:?}");
        let known = out
            .stdout
            .lines()
            .filter(|l| l.split_whitespace().nth(3) == Some(id(leader).as_str()))
            .count();
        (known == 3).then_some(out.stdout)
    });
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["NODE", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST", "SNAPSHOT", "URL"]
    );
    for i in 0..3 {
        let row = lines
            .iter()
            .find(|l| l.starts_with(&format!("{} ", id(i))))
            .unwrap_or_else(|| panic!("no row for node {i}:\n{table}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        let role = if i == leader { "leader" } else { "follower" };
        assert_eq!(cols[1], role, "{table}");
        assert_eq!(cols[8], c.url(i), "{table}");
        // Aligned: the URL column starts where its header does.
        assert_eq!(row.find("http://"), lines[0].find("URL"), "{table}");
    }
    assert!(table.contains("3/3 nodes reachable"), "{table}");

    // One reachable node is enough to see the whole cluster.
    let out = cli(&c.url(leader), &["status"]);
    assert_eq!(out.stdout.lines().count(), 5, "{}", out.stdout);
    for i in 0..3 {
        assert!(out.stdout.contains(&c.url(i)), "{}", out.stdout);
    }

    // --json: an array of the nodes' raw status; --node: one object.
    let arr: serde_json::Value =
        serde_json::from_str(&cli(&nodes, &["status", "--json"]).stdout).unwrap();
    assert_eq!(arr.as_array().unwrap().len(), 3);
    let one = cli(&nodes, &["status", "--json", "--node", &c.url(1)]);
    let obj: serde_json::Value = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(obj["node_id"], "node-2");

    // --node URL: that node, then its peers; a dead peer shows as unreachable.
    let victim = (leader + 1) % 3;
    let victim_id = id(victim);
    c.nodes[victim].kill9();
    let out = cli(&c.url(leader), &["status", "--node", &c.url(leader)]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 5, "{}", out.stdout);
    let dead = out
        .stdout
        .lines()
        .find(|l| l.contains("unreachable"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(dead.starts_with(&victim_id), "{dead}");
    assert!(dead.contains(&c.url(victim)), "{dead}");
    assert!(out.stdout.contains("2/3 nodes reachable"), "{}", out.stdout);
    // With every node in --nodes, the dead one is named from the peer lists.
    let out = cli(&nodes, &["status"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 5, "{}", out.stdout);
    let dead = out
        .stdout
        .lines()
        .find(|l| l.contains("unreachable"))
        .unwrap();
    assert!(dead.starts_with(&victim_id), "{}", out.stdout);
}

#[test]
fn usage_errors_exit_2() {
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["frobnicate"],
        vec!["put", "only-a-key"],
        vec!["put", "k", "v", "--cas", "not-a-number"],
        vec!["put", "", "v"],
        vec!["get", "k", "--nodes", "https://127.0.0.1:1"],
        vec!["get", "k", "--nodes", ","],
        vec!["start"],
        vec!["start", "--node-id", "n", "--peers", "node-2"],
        vec!["start", "--node-id", "n", "--port", "70000"],
        vec![
            "start",
            "--node-id",
            "n",
            "--heartbeat-ms",
            "900",
            "--election-timeout-ms",
            "300",
        ],
        vec!["local-cluster", "--nodes", "0"],
        vec!["put", "k", "v", "--file", "/dev/null"],
        vec!["put", "k", "--file", "/no/such/file"],
        vec!["get", "k", "--rev", "x"],
        vec!["list", "--limit", "0"],
        vec!["list", "--prefix", "a", "--from", "b"],
        vec!["list", "--sort-by", "size"],
        vec!["delete"],
        vec!["delete", "--prefix", ""],
        vec!["delete", "--prefix", "p", "--cas", "1"],
        vec!["compact"],
        vec!["compact", "0"],
        vec!["watch"],
        vec!["watch", "k", "--prefix", "p"],
    ];
    for args in cases {
        let mut cmd = raftkv();
        // Nothing listens here: a command that wrongly got past parsing
        // fails with 3, not 2.
        cmd.args(&args).env("RAFTKV_NODES", "127.0.0.1:1");
        let out = run_with_limit(cmd, Duration::from_secs(20));
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: explain the error");
    }
    // put --file: over 1 MiB, or not UTF-8, is a usage error that says why,
    // before any node is asked.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; (1 << 20) + 1]).unwrap();
    let binary = dir.path().join("binary");
    std::fs::write(&binary, [b'o', b'k', 0xff, 0xfe]).unwrap();
    for (file, why) in [
        (&big, "larger than the limit of 1048576 bytes"),
        (&binary, "not UTF-8"),
    ] {
        let mut cmd = raftkv();
        cmd.args(["put", "k", "--file"])
            .arg(file)
            .env("RAFTKV_NODES", "127.0.0.1:1");
        let out = run_with_limit(cmd, Duration::from_secs(20));
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains(why), "{out:?}");
    }
    let mut cmd = raftkv();
    cmd.args(["put", "k", "--file", "-"])
        .env("RAFTKV_NODES", "127.0.0.1:1");
    let out = run_with_stdin(cmd, &vec![b'y'; (1 << 20) + 10]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("standard input is larger"), "{out:?}");

    // Bad values from the environment are usage errors too.
    let mut cmd = raftkv();
    cmd.args(["start", "--node-id", "n"])
        .env("RAFTKV_PEERS", "node-2=nowhere");
    let out = run_with_limit(cmd, Duration::from_secs(20));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("--peers"), "{out:?}");
}

#[test]
fn all_nodes_down_exits_3() {
    let ports = free_ports(3);
    let nodes = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    // Commands that retry keep at it until --timeout-ms, then exit 3 with
    // a truthful message; `status` shows what it sees at once.
    for args in [
        vec!["put", "k", "v"],
        vec!["get", "k"],
        vec!["delete", "k"],
        vec!["list"],
        vec!["leader"],
        vec!["status"],
    ] {
        let mut with_timeout = args.clone();
        with_timeout.extend(["--timeout-ms", "1500"]);
        let started = Instant::now();
        let out = cli(&nodes, &with_timeout);
        let took = started.elapsed();
        assert_eq!(out.code, Some(3), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty() || args[0] == "status", "{out:?}");
        assert!(out.stderr.contains("error"), "{args:?}: {out:?}");
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
        if args[0] != "status" {
            assert!(
                took >= Duration::from_millis(1400),
                "{args:?} gave up after {took:?}, before its timeout"
            );
            assert!(out.stderr.contains("gave up after"), "{out:?}");
            assert!(!out.stderr.contains("no attempt made"), "{out:?}");
        }
    }
    let status = cli(&nodes, &["status"]);
    assert_eq!(
        status.stdout.matches("unreachable").count(),
        3,
        "{status:?}"
    );
    // `health` follows Docker's convention: 1 = unhealthy.
    let out = cli(
        &nodes,
        &["health", "--node", &format!("127.0.0.1:{}", ports[0])],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
}

#[test]
fn a_command_waits_for_a_node_that_starts_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let url = format!("http://127.0.0.1:{port}");
    // The client logs each failed attempt at debug level: the node is
    // started only once the command has seen it refuse a connection.
    let mut cmd = raftkv();
    cmd.args(["put", "late", "arrival", "--timeout-ms", "30000"])
        .env("RAFTKV_NODES", &url)
        .env("RUST_LOG", "raftkv::client=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut put = Proc {
        child: cmd.spawn().unwrap(),
        name: "put".into(),
    };
    let stdout = put.child.stdout.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stdout).read_to_string(&mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    line_reader(put.child.stderr.take().unwrap(), tx);
    let mut seen = Vec::new();
    wait_for_line(&rx, "connect failed", &mut seen);

    let mut node = raftkv();
    node.args(["start", "--node-id", "late", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("late"))
        .env("RAFTKV_ELECTION_TIMEOUT_MS", "300")
        .env("RAFTKV_HEARTBEAT_MS", "50")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut node = Proc {
        child: node.spawn().unwrap(),
        name: "late node".into(),
    };
    let status = put
        .wait_exit(Duration::from_secs(40))
        .expect("the put finishes once the node is up");
    let printed = out.join().unwrap();
    assert_eq!(status.code(), Some(0), "{printed} {seen:?}");
    assert!(printed.starts_with("OK (index "), "{printed}");
    let get = cli(&url, &["get", "late"]);
    assert_eq!(get.stdout, "late = arrival\n", "{get:?}");
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(15)).is_some());
}

#[test]
fn help_matches_behaviour_and_shows_no_empty_env_values() {
    let subcommands = [
        "start",
        "local-cluster",
        "put",
        "get",
        "delete",
        "list",
        "txn",
        "compact",
        "watch",
        "status",
        "leader",
        "health",
        "bench",
    ];
    for with_env in [false, true] {
        for sub in subcommands {
            let mut cmd = raftkv();
            cmd.args([sub, "--help"]);
            if with_env {
                // Set values are not printed either (no `=15]`, no secrets).
                cmd.env("RAFTKV_TIMEOUT_MS", "4321")
                    .env("RAFTKV_PORT", "4321");
            }
            let out = run_with_limit(cmd, Duration::from_secs(10));
            assert_eq!(out.code, Some(0), "{sub}: {out:?}");
            assert!(!out.stdout.contains("=]"), "{sub} --help:\n{}", out.stdout);
            assert!(
                !out.stdout.contains("4321"),
                "{sub} --help:\n{}",
                out.stdout
            );
        }
    }
    let get = run_with_limit(
        {
            let mut c = raftkv();
            c.args(["get", "--help"]);
            c
        },
        Duration::from_secs(10),
    );
    assert!(
        get.stdout.contains("[env: RAFTKV_TIMEOUT_MS]"),
        "{}",
        get.stdout
    );
    // `status --node` does not show only that node: it starts there.
    let status = run_with_limit(
        {
            let mut c = raftkv();
            c.args(["status", "--help"]);
            c
        },
        Duration::from_secs(10),
    );
    assert!(
        !status.stdout.contains("Show only this node"),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains("the peers this node reports are asked too"),
        "{}",
        status.stdout
    );
    let put = run_with_limit(
        {
            let mut c = raftkv();
            c.args(["put", "--help"]);
            c
        },
        Duration::from_secs(10),
    );
    assert!(put.stdout.contains("--file <PATH>"), "{}", put.stdout);
}

#[tokio::test]
async fn client_fails_over_when_the_leader_dies() {
    let (mut c, leader) = cluster().await;
    let nodes = urls(&c);
    assert_eq!(cli(&nodes, &["put", "before", "1"]).code, Some(0));
    c.nodes[leader].kill9();
    // The dead leader is first in the list on purpose.
    let mut order: Vec<String> = vec![c.url(leader)];
    order.extend((0..3).filter(|&i| i != leader).map(|i| c.url(i)));
    let order = order.join(",");
    let put = cli(&order, &["put", "after", "2"]);
    assert_eq!(put.code, Some(0), "{put:?}");
    assert_eq!(cli(&order, &["get", "before"]).stdout, "before = 1\n");
    assert_eq!(cli(&order, &["get", "after"]).stdout, "after = 2\n");
    let out = cli(&order, &["leader"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!out.stdout.starts_with(&c.nodes[leader].name), "{out:?}");
}

#[test]
fn start_reads_the_environment_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let data = dir.path().join("solo-data");
    let mut cmd = raftkv();
    cmd.arg("start")
        .env("RAFTKV_NODE_ID", "solo")
        .env("RAFTKV_PORT", port.to_string())
        .env("RAFTKV_PEERS", "")
        .env("RAFTKV_DATA_DIR", &data)
        .env("RAFTKV_ELECTION_TIMEOUT_MS", "300")
        .env("RAFTKV_HEARTBEAT_MS", "50")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut node = Proc {
        child: cmd.spawn().unwrap(),
        name: "solo".into(),
    };
    let stderr = node.child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let url = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(20), "the single node to commit", || {
        let out = cli(&url, &["put", "k", "v", "--timeout-ms", "2000"]);
        (out.code == Some(0)).then_some(())
    });
    let health = cli(&url, &["health", "--node", &url]);
    assert_eq!(health.code, Some(0), "{health:?}");
    assert!(health.stdout.starts_with("ok solo"), "{health:?}");
    // `health` without --node finds the port in RAFTKV_PORT (as in the image).
    let mut cmd = raftkv();
    cmd.arg("health").env("RAFTKV_PORT", port.to_string());
    assert_eq!(run_with_limit(cmd, Duration::from_secs(10)).code, Some(0));
    assert!(data.exists(), "RAFTKV_DATA_DIR was used");

    node.signal(libc::SIGTERM);
    let status = node
        .wait_exit(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let log = log.join().unwrap();
    assert!(log.contains("INFO"), "logs at info level by default: {log}");
    assert!(!listening(port));

    // The same data dir under another node id: refused, exit != 0, and said why.
    let mut cmd = raftkv();
    cmd.args([
        "start",
        "--node-id",
        "intruder",
        "--port",
        &port.to_string(),
    ])
    .arg("--data-dir")
    .arg(&data);
    let out = run_with_limit(cmd, Duration::from_secs(20));
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("error"), "{out:?}");
}

/// Forwards a child's output lines into a channel.
fn line_reader(stdout: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return;
                }
            }
            Err(_) => panic!(
                "no line with {needle:?}; output so far:\n{}",
                seen.join("\n")
            ),
        }
    }
}

fn local_cluster(base: u16, data: &Path) -> (Proc, mpsc::Receiver<String>) {
    let mut cmd = raftkv();
    cmd.args([
        "local-cluster",
        "--nodes",
        "3",
        "--base-port",
        &base.to_string(),
    ])
    .arg("--data-dir")
    .arg(data)
    // Fast elections keep the test short; children inherit these.
    .env("RAFTKV_ELECTION_TIMEOUT_MS", "300")
    .env("RAFTKV_HEARTBEAT_MS", "50")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    line_reader(child.stdout.take().unwrap(), tx.clone());
    line_reader(child.stderr.take().unwrap(), tx);
    (
        Proc {
            child,
            name: "local-cluster".into(),
        },
        rx,
    )
}

#[test]
fn local_cluster_starts_recovers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let base = free_consecutive_ports(3);
    let nodes = (0..3)
        .map(|i| format!("http://127.0.0.1:{}", base + i))
        .collect::<Vec<_>>()
        .join(",");

    let (mut lc, rx) = local_cluster(base, &data);
    let mut seen = Vec::new();
    wait_for_line(&rx, "Leader elected", &mut seen);
    let banner = seen.join("\n");
    for i in 0..3u16 {
        assert!(
            banner.contains(&format!("node-{}   http://127.0.0.1:{}", i + 1, base + i)),
            "{banner}"
        );
    }
    assert!(banner.contains("curl"), "{banner}");
    let put = cli(&nodes, &["put", "persisted", "yes"]);
    assert_eq!(put.code, Some(0), "{put:?}");

    lc.signal(libc::SIGTERM);
    let status = lc
        .wait_exit(Duration::from_secs(30))
        .expect("local-cluster exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    for i in 0..3 {
        assert!(!listening(base + i), "node on port {} still up", base + i);
    }
    for i in 1..=3 {
        assert!(data.join(format!("node-{i}")).is_dir());
        assert!(data.join(format!("node-{i}.log")).is_file());
    }

    // Again on the same data dir: the same cluster with its data.
    let (mut lc, rx) = local_cluster(base, &data);
    let mut seen = Vec::new();
    wait_for_line(&rx, "Leader elected", &mut seen);
    let get = cli(&nodes, &["get", "persisted"]);
    assert_eq!(get.stdout, "persisted = yes\n", "{get:?}");

    // A second launcher on the same data dir (other ports) fails fast,
    // before its banner and without touching the running nodes' logs.
    let logs_before: Vec<u64> = (1..=3)
        .map(|i| {
            std::fs::metadata(data.join(format!("node-{i}.log")))
                .unwrap()
                .len()
        })
        .collect();
    let other_base = free_consecutive_ports(3);
    let mut second = raftkv();
    second
        .args(["local-cluster", "--base-port", &other_base.to_string()])
        .arg("--data-dir")
        .arg(&data);
    let started = Instant::now();
    let out = run_with_limit(second, Duration::from_secs(20));
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "fails fast");
    assert!(
        out.stderr.contains(&format!(
            "in use by another local-cluster (pid {})",
            lc.pid()
        )),
        "{out:?}"
    );
    assert!(
        !out.stdout.contains("RaftKV local cluster"),
        "no banner: {out:?}"
    );
    let logs_after: Vec<u64> = (1..=3)
        .map(|i| {
            std::fs::metadata(data.join(format!("node-{i}.log")))
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(
        logs_before, logs_after,
        "the running cluster's logs are untouched"
    );
    for i in 0..3 {
        assert!(!listening(other_base + i));
    }

    // A node that dies is reported (the banner gives the PIDs).
    let pid: i32 = seen
        .iter()
        .find(|l| l.trim_start().starts_with("node-3 "))
        .and_then(|l| l.split("pid ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid for node-3 in:\n{}", seen.join("\n")));
    // SAFETY: kill(2) on a process of the cluster this test started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    wait_for_line(&rx, "node-3 (pid", &mut seen);
    assert!(
        seen.last().unwrap().contains("exited unexpectedly"),
        "{seen:?}"
    );
    // The others keep serving.
    let put = cli(&nodes, &["put", "after-death", "ok"]);
    assert_eq!(put.code, Some(0), "{put:?}");

    // A node stopped cleanly (SIGTERM, exit 0) is reported as such.
    let pid2: i32 = seen
        .iter()
        .find(|l| l.trim_start().starts_with("node-2 "))
        .and_then(|l| l.split("pid ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid for node-2 in:\n{}", seen.join("\n")));
    // SAFETY: kill(2) on a process of the cluster this test started.
    unsafe {
        libc::kill(pid2, libc::SIGTERM);
    }
    wait_for_line(&rx, "node-2 (pid", &mut seen);
    let line = seen.last().unwrap();
    assert!(line.contains("stopped cleanly (exit status 0)"), "{line}");
    assert!(!line.contains("unexpectedly"), "{line}");
    lc.signal(libc::SIGTERM);
    let status = lc.wait_exit(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(0));
    for i in 0..3 {
        assert!(!listening(base + i));
    }
}
