//! Helpers for the etcd compatibility suites (tests/etcdctl_compat.rs,
//! tests/etcd_client.rs): a real three-node etcd cluster on free loopback
//! ports, a RaftKV cluster started the same way, and `etcdctl` runs with a
//! bounded deadline.
//!
//! Included with `#[path = "common/etcd.rs"] mod etcd;` next to `mod common;`
//! so that tests/common/mod.rs stays as it is. Every process started here is
//! killed by PID on drop; every wait polls a condition against a deadline.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{free_ports, Cluster, Opts};

/// Env var that turns a missing etcd/etcdctl into a failure instead of a skip
/// (CI sets it, so a broken install step cannot pass silently).
pub const REQUIRE_ENV: &str = "RAFTKV_REQUIRE_ETCD";

/// Serializes the tests of one binary that start clusters: each picks
/// free ports by binding and releasing them, and two tests doing that at
/// once can hand the same port to two clusters (an etcd then fails to bind,
/// or joins the other test's cluster). Hold the guard for the whole test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when `name` is an executable file on `PATH`.
pub fn on_path(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        let p = dir.join(name);
        std::fs::metadata(&p)
            .map(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
            .unwrap_or(false)
    })
}

/// Writes straight to the process's stderr: libtest captures `eprintln!`,
/// and a skip must be visible in a passing run.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Whether `etcd` and `etcdctl` are installed. When they are not, prints
/// a visible SKIPPED line and returns false, or panics if
/// `RAFTKV_REQUIRE_ETCD=1`.
pub fn tools_or_skip(test: &str) -> bool {
    let missing: Vec<&str> = ["etcdctl", "etcd"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(" and ");
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{test}: {what} not installed, and {REQUIRE_ENV}=1 requires them");
    }
    say(&format!(
        "SKIPPED: {what} not installed ({test}; set {REQUIRE_ENV}=1 to fail instead)"
    ));
    false
}

/// A child process killed (SIGKILL by PID) and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    /// Waits at most `limit` for the exit code; `None` if still running
    /// (or killed by a signal).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + limit;
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return Some(status.code()),
                Ok(None) => {}
                Err(_) => return None,
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The PID.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// What one `etcdctl` run produced.
#[derive(Debug, Clone)]
pub struct Out {
    /// Exit code; `None` when it had to be killed at the deadline.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error (etcdctl's JSON log lines included).
    pub stderr: String,
}

impl Out {
    /// The `Error: ...` lines of stderr: what etcdctl reports to the user,
    /// without its client library's JSON log lines (timestamps, targets).
    pub fn errors(&self) -> String {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("Error:"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Exit code, stdout and the `Error:` lines, as one comparable text.
    pub fn text(&self) -> String {
        format!(
            "exit={:?}\n{}{}",
            self.code,
            self.stdout,
            if self.errors().is_empty() {
                String::new()
            } else {
                format!("stderr: {}\n", self.errors())
            }
        )
    }
}

/// `etcdctl` (API v3) aimed at a fixed list of endpoints.
#[derive(Clone, Debug)]
pub struct Ctl {
    /// `host:port` of every member.
    pub endpoints: Vec<String>,
}

impl Ctl {
    /// A `Command` with the API version and endpoints set and no inherited
    /// ETCDCTL_* settings.
    pub fn command(&self, endpoints: &[String]) -> Command {
        let mut cmd = Command::new("etcdctl");
        for (k, _) in std::env::vars() {
            if k.starts_with("ETCDCTL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--dial-timeout=3s")
            .arg("--command-timeout=10s");
        cmd
    }

    /// Runs `etcdctl ARGS` against every endpoint with `input` on stdin,
    /// killing it after `limit`.
    pub fn run_limit(&self, args: &[&str], input: &str, limit: Duration) -> Out {
        self.run_on(&self.endpoints, args, input, limit)
    }

    /// Runs `etcdctl ARGS` (30 s at most).
    pub fn run(&self, args: &[&str]) -> Out {
        self.run_on(&self.endpoints, args, "", Duration::from_secs(30))
    }

    /// Runs `etcdctl ARGS` with `input` on stdin (30 s at most).
    pub fn run_stdin(&self, args: &[&str], input: &str) -> Out {
        self.run_on(&self.endpoints, args, input, Duration::from_secs(30))
    }

    /// Runs `etcdctl ARGS` against the given endpoints only.
    pub fn run_on(&self, endpoints: &[String], args: &[&str], input: &str, limit: Duration) -> Out {
        let mut cmd = self.command(endpoints);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Out {
                    code: None,
                    stdout: String::new(),
                    stderr: format!("Error: cannot spawn etcdctl: {e}"),
                }
            }
        };
        let stdin = child.stdin.take();
        let out = child.stdout.take();
        let err = child.stderr.take();
        let mut proc = Proc(child);
        let input = input.as_bytes().to_vec();
        let writer = std::thread::spawn(move || {
            if let Some(mut s) = stdin {
                let _ = s.write_all(&input);
            }
        });
        let t_out = std::thread::spawn(move || read_all(out));
        let t_err = std::thread::spawn(move || read_all(err));
        let code = proc.wait_exit(limit).flatten();
        // Killing it (on drop) closes the pipes, so the readers finish.
        drop(proc);
        let _ = writer.join();
        Out {
            code,
            stdout: t_out.join().unwrap_or_default(),
            stderr: t_err.join().unwrap_or_default(),
        }
    }

    /// Starts a long-running `etcdctl ARGS` (a watch); its stdout lines
    /// arrive on the receiver, its stderr goes to `stderr_path`.
    pub fn spawn_lines(&self, args: &[&str], stderr_path: &Path) -> (Proc, mpsc::Receiver<String>) {
        let mut cmd = self.command(&self.endpoints);
        let err = File::create(stderr_path).expect("create stderr file");
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        let mut child = cmd.spawn().expect("spawn etcdctl");
        let stdout = child.stdout.take().expect("piped stdout");
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

    /// Polls `endpoint health` on every endpoint until it exits 0.
    pub fn wait_healthy(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let out = self.run_limit(&["endpoint", "health"], "", Duration::from_secs(10));
            if out.code == Some(0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not healthy within {within:?}: {}\n{}",
                    out.stdout, out.stderr
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn read_all<R: Read>(r: Option<R>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        s = String::from_utf8_lossy(&buf).into_owned();
    }
    s
}

/// Reads lines from `rx` until `n` arrived or `within` passed.
pub fn take_lines(rx: &mpsc::Receiver<String>, n: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut lines = Vec::new();
    while lines.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    lines
}

/// One etcd member process.
struct EtcdMember {
    proc: Option<Proc>,
    log_path: PathBuf,
}

/// A three-node (or n-node) etcd cluster on loopback with temporary data
/// dirs; every member is killed by PID on drop.
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
    /// `host:port` client endpoints.
    pub endpoints: Vec<String>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits (bounded) until all are healthy.
    pub fn start(n: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(2 * n);
        let client: Vec<u16> = ports[..n].to_vec();
        let peer: Vec<u16> = ports[n..].to_vec();
        let initial: Vec<String> = (0..n)
            .map(|i| format!("e{}=http://127.0.0.1:{}", i + 1, peer[i]))
            .collect();
        let token = format!(
            "raftkv-compat-{}-{}",
            std::process::id(),
            dir.path().display()
        );
        let mut members = Vec::new();
        for i in 0..n {
            let log_path = dir.path().join(format!("e{}.log", i + 1));
            let log = File::create(&log_path).expect("create etcd log");
            let curl = format!("http://127.0.0.1:{}", client[i]);
            let purl = format!("http://127.0.0.1:{}", peer[i]);
            let child = Command::new("etcd")
                .arg(format!("--name=e{}", i + 1))
                .arg(format!(
                    "--data-dir={}",
                    dir.path().join(format!("e{}", i + 1)).display()
                ))
                .arg(format!("--listen-client-urls={curl}"))
                .arg(format!("--advertise-client-urls={curl}"))
                .arg(format!("--listen-peer-urls={purl}"))
                .arg(format!("--initial-advertise-peer-urls={purl}"))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--initial-cluster-state=new")
                .arg(format!("--initial-cluster-token={token}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn etcd");
            members.push(EtcdMember {
                proc: Some(Proc(child)),
                log_path,
            });
        }
        let c = EtcdCluster {
            members,
            endpoints: client.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            dir,
        };
        if let Err(e) = c.ctl().wait_healthy(Duration::from_secs(30)) {
            c.dump_logs();
            panic!("etcd cluster: {e}");
        }
        c
    }

    /// `etcdctl` aimed at every member.
    pub fn ctl(&self) -> Ctl {
        Ctl {
            endpoints: self.endpoints.clone(),
        }
    }

    /// The shared temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PIDs of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.proc.as_ref().map(Proc::pid))
            .collect()
    }

    /// Prints every member's log.
    pub fn dump_logs(&self) {
        for (i, m) in self.members.iter().enumerate() {
            let log = std::fs::read_to_string(&m.log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "===== etcd e{} (last 40 lines) =====\n{}",
                i + 1,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for m in &mut self.members {
            m.proc.take(); // Proc's drop kills by PID and reaps
        }
    }
}

/// Starts a three-node RaftKV cluster (tests/common) and waits (bounded) for
/// a leader. Its client ports serve both the JSON API and etcd's gRPC API.
pub fn start_raftkv() -> (Cluster, Ctl) {
    let mut c = Cluster::start(3, &Opts::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(c.wait_for_leader(Duration::from_secs(30)));
    let ctl = Ctl {
        endpoints: c
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect(),
    };
    (c, ctl)
}
