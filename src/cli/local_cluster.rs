//! `raftkv local-cluster`: N node processes on 127.0.0.1, for trying RaftKV
//! out and for development.
//!
//! The children are this same executable running `start`. Each logs to
//! `DATA_DIR/node-i.log` so the terminal stays readable. The children run in
//! their own process group, so Ctrl-C reaches only this process, which then
//! stops them in order (SIGTERM by PID, wait, SIGKILL only if one hangs). On
//! Linux they also get SIGTERM if this process dies without cleaning up.
//!
//! Before it prints anything or opens a log file, it checks that the data
//! dir is free: `DATA_DIR/local-cluster.lock` (an `flock` held for the
//! launcher's lifetime, with its PID inside) catches a second launcher, and
//! a probe of each node's sled lock catches a node started by hand.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use tokio::process::{Child, Command};

use crate::client::{Client, ClientConfig};

/// Flags of `raftkv local-cluster`.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  raftkv local-cluster\n  \
    raftkv local-cluster --nodes 5 --base-port 9001 --data-dir /tmp/raftkv\n\n\
    Run it again on the same --data-dir and the same cluster comes back with its data.")]
pub struct LocalClusterArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub nodes: u16,
    /// Port of node-1; node-i listens on BASE_PORT + i - 1.
    #[arg(long, default_value_t = 8001)]
    pub base_port: u16,
    /// Parent of the nodes' data dirs (DATA_DIR/node-i) and log files
    /// (DATA_DIR/node-i.log).
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Cluster id given to every node.
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// Seconds to wait for the first leader before warning that none came
    /// (the nodes keep running).
    #[arg(long, default_value_t = 30)]
    pub leader_timeout_s: u64,
}

/// One node of the local cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNode {
    /// `node-i`.
    pub id: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its log file.
    pub log_file: PathBuf,
}

impl LocalNode {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The nodes `args` describes, or why they cannot exist.
pub fn plan(args: &LocalClusterArgs) -> Result<Vec<LocalNode>, String> {
    let last = u32::from(args.base_port) + u32::from(args.nodes) - 1;
    if args.base_port == 0 || last > u32::from(u16::MAX) {
        return Err(format!(
            "ports {}..={last} are not all valid port numbers",
            args.base_port
        ));
    }
    Ok((1..=args.nodes)
        .map(|i| {
            let id = format!("node-{i}");
            LocalNode {
                port: args.base_port + i - 1,
                data_dir: args.data_dir.join(&id),
                log_file: args.data_dir.join(format!("{id}.log")),
                id,
            }
        })
        .collect())
}

/// The `start` arguments of `node` in the cluster `all`.
pub fn start_args(node: &LocalNode, all: &[LocalNode], cluster_id: Option<&str>) -> Vec<String> {
    let peers: Vec<String> = all
        .iter()
        .filter(|n| n.id != node.id)
        .map(|n| format!("{}=127.0.0.1:{}", n.id, n.port))
        .collect();
    let mut args = vec![
        "start".to_string(),
        "--node-id".into(),
        node.id.clone(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        node.port.to_string(),
        "--advertise".into(),
        format!("127.0.0.1:{}", node.port),
        "--peers".into(),
        peers.join(","),
        "--data-dir".into(),
        node.data_dir.display().to_string(),
    ];
    if let Some(id) = cluster_id {
        args.push("--cluster-id".into());
        args.push(id.into());
    }
    args
}

struct Running {
    node: LocalNode,
    child: Child,
    pid: u32,
    exited: Option<std::process::ExitStatus>,
}

/// Runs the local cluster until SIGINT/SIGTERM or until every node died.
pub async fn run(args: LocalClusterArgs) -> anyhow::Result<ExitCode> {
    let nodes = match plan(&args) {
        Ok(n) => n,
        Err(e) => return Ok(super::usage_error("local-cluster", e)),
    };
    if let Some(id) = &args.cluster_id {
        if let Err(e) = super::start::parse_node_id(id) {
            return Ok(super::usage_error(
                "local-cluster",
                format!("--cluster-id: {e}"),
            ));
        }
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    // Checked before any banner, log file or child: a second launcher on
    // the same data dir must not write into the running cluster's logs.
    let _lock = LauncherLock::acquire(&args.data_dir)?;
    for n in &nodes {
        if node_dir_in_use(&n.data_dir)? {
            anyhow::bail!(
                "{} is in use by another process (its database lock is held): \
                 a raftkv node for {} is already running on it. Stop it, or use another --data-dir",
                n.data_dir.display(),
                n.id
            );
        }
    }
    for n in &nodes {
        // Fail early and clearly rather than with three children dying on
        // "address in use".
        std::net::TcpListener::bind(("127.0.0.1", n.port)).with_context(|| {
            format!(
                "port {} (for {}) is not free; is another cluster running? \
                 Choose other ports with --base-port",
                n.port, n.id
            )
        })?;
    }
    let exe = std::env::current_exe().context("cannot find the raftkv executable")?;
    let shutdown = super::signals::shutdown_signal().context("cannot install signal handlers")?;
    tokio::pin!(shutdown);

    let mut running: Vec<Running> = Vec::new();
    for n in &nodes {
        match spawn(&exe, n, &nodes, args.cluster_id.as_deref()) {
            Ok(r) => running.push(r),
            Err(e) => {
                stop_all(&mut running).await;
                return Err(e);
            }
        }
    }
    print_banner(&exe, &running, &args);

    // Wait for the first leader, watching for signals and dying children.
    let client = Client::new(ClientConfig {
        nodes: nodes.iter().map(LocalNode::url).collect(),
        attempt_timeout: Duration::from_secs(1),
        total_timeout: Duration::from_millis(500),
        ..ClientConfig::default()
    })?;
    let leader_deadline = Instant::now() + Duration::from_secs(args.leader_timeout_s);
    let mut leader_known = false;
    let mut warned_slow = false;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        if reap(&mut running) && running.iter().all(|r| r.exited.is_some()) {
            let clean = running
                .iter()
                .all(|r| r.exited.is_some_and(|s| s.success()));
            if clean {
                println!("Every node has stopped cleanly; exiting.");
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("every node has exited; stopping");
            return Ok(ExitCode::FAILURE);
        }
        if !leader_known {
            if let Ok(info) = client.leader().await {
                leader_known = true;
                println!(
                    "Leader elected: {} ({}, term {}). The cluster is ready; press Ctrl-C to stop it.",
                    info.leader_id, info.leader_url, info.term
                );
            } else if !warned_slow && Instant::now() > leader_deadline {
                warned_slow = true;
                eprintln!(
                    "warning: no leader after {}s; check the logs in {} (still waiting)",
                    args.leader_timeout_s,
                    args.data_dir.display()
                );
            }
        }
    }
    let alive = running.iter().filter(|r| r.exited.is_none()).count();
    println!("Stopping {alive} node(s)...");
    if stop_all(&mut running).await {
        println!("All nodes stopped.");
    } else {
        println!("Stopped; see the messages above for nodes that exited earlier or with an error.");
    }
    Ok(ExitCode::SUCCESS)
}

fn spawn(
    exe: &Path,
    node: &LocalNode,
    all: &[LocalNode],
    cluster_id: Option<&str>,
) -> anyhow::Result<Running> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log_file)
        .with_context(|| format!("cannot open {}", node.log_file.display()))?;
    let log2 = log.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.args(start_args(node, all, cluster_id))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches no memory of ours; it
    // runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {} ({})", node.id, exe.display()))?;
    let pid = child.id().context("child has no pid")?;
    Ok(Running {
        node: node.clone(),
        child,
        pid,
        exited: None,
    })
}

/// Notes children that exited; reports each one once. Returns true if any
/// child exited since the last call.
fn reap(running: &mut [Running]) -> bool {
    let mut any = false;
    for r in running.iter_mut().filter(|r| r.exited.is_none()) {
        if let Ok(Some(status)) = r.child.try_wait() {
            r.exited = Some(status);
            any = true;
            if status.success() {
                // Someone stopped it with SIGTERM/SIGINT: a clean shutdown,
                // not a crash.
                println!(
                    "{} (pid {}) stopped cleanly (exit status 0); the others keep running.",
                    r.node.id, r.pid
                );
                continue;
            }
            eprintln!(
                "{} (pid {}) exited unexpectedly: {status}. Last lines of {}:",
                r.node.id,
                r.pid,
                r.node.log_file.display()
            );
            for line in tail(&r.node.log_file, 10) {
                eprintln!("  | {line}");
            }
        }
    }
    any
}

/// SIGTERM to every running child, then wait; SIGKILL any that has not
/// exited after 10 s. Returns true if every node, including those that
/// stopped earlier, exited cleanly (status 0).
async fn stop_all(running: &mut [Running]) -> bool {
    for r in running.iter().filter(|r| r.exited.is_none()) {
        // The child has not been reaped (exited is None and we hold it), so
        // its PID cannot have been reused.
        let pid = libc::pid_t::try_from(r.pid).unwrap_or(0);
        if pid > 0 {
            // SAFETY: plain kill(2) on our own child's PID.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    let mut clean = true;
    for r in running.iter_mut() {
        if let Some(status) = r.exited {
            // Reported when it happened; only a failure makes this unclean.
            clean &= status.success();
            continue;
        }
        let status = match tokio::time::timeout(Duration::from_secs(10), r.child.wait()).await {
            Ok(Ok(status)) => status,
            _ => {
                eprintln!(
                    "{} (pid {}) did not stop in 10 s; killing it",
                    r.node.id, r.pid
                );
                let _ = r.child.kill().await;
                clean = false;
                continue;
            }
        };
        r.exited = Some(status);
        if !status.success() {
            clean = false;
            eprintln!(
                "{} (pid {}) stopped with {status}; see {}",
                r.node.id,
                r.pid,
                r.node.log_file.display()
            );
        }
    }
    clean
}

/// `DATA_DIR/local-cluster.lock`, exclusively `flock`ed while this
/// launcher runs (the kernel drops the lock when the process dies, so a
/// crashed launcher leaves no stale lock behind).
struct LauncherLock {
    _file: std::fs::File,
}

/// Name of the launcher's lock file in the data dir.
pub const LOCK_FILE: &str = "local-cluster.lock";

impl LauncherLock {
    fn acquire(data_dir: &Path) -> anyhow::Result<LauncherLock> {
        use std::io::{Read, Seek, Write};
        let path = data_dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if !try_flock(&file).with_context(|| format!("cannot lock {}", path.display()))? {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                String::from("another local-cluster")
            } else {
                format!("another local-cluster (pid {holder})")
            };
            anyhow::bail!(
                "{} is in use by {who}. Stop that one first (Ctrl-C in its terminal{}), \
                 or give this one another --data-dir",
                data_dir.display(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(", or kill -TERM {holder}")
                }
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(LauncherLock { _file: file })
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` if another open file holds it.
fn try_flock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a file descriptor we own for the call's duration.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// True if a process holds the sled database lock of `node_dir` (sled
/// `flock`s `node_dir/db`). The probe's own lock is released at once by
/// closing the file, before any child is started.
fn node_dir_in_use(node_dir: &Path) -> anyhow::Result<bool> {
    let db = node_dir.join("db");
    let file = match std::fs::File::open(&db) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", db.display())),
    };
    let free = try_flock(&file).with_context(|| format!("cannot check {}", db.display()))?;
    Ok(!free)
}

fn tail(path: &Path, lines: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// How to run this executable from the current directory, for the examples.
fn invocation(exe: &Path) -> String {
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(|p| Path::new(".").join(p)))
        .unwrap_or_else(|| exe.to_path_buf());
    shown.display().to_string()
}

fn print_banner(exe: &Path, running: &[Running], args: &LocalClusterArgs) {
    let raftkv = invocation(exe);
    let nodes: Vec<LocalNode> = running.iter().map(|r| r.node.clone()).collect();
    let urls: Vec<String> = nodes.iter().map(LocalNode::url).collect();
    let default_nodes = urls.join(",") == crate::client::DEFAULT_NODES;
    let nodes_flag = if default_nodes {
        String::new()
    } else {
        format!(" --nodes {}", urls.join(","))
    };
    println!("RaftKV local cluster: {} node(s)", nodes.len());
    for r in running {
        println!(
            "  {:<8} {}   pid {}   data {}   log {}",
            r.node.id,
            r.node.url(),
            r.pid,
            r.node.data_dir.display(),
            r.node.log_file.display()
        );
    }
    let first = &urls[0];
    let other = urls.get(1).unwrap_or(first);
    println!();
    println!("Try:");
    println!("  curl -X PUT -H 'Content-Type: application/json' -d '{{\"value\":\"world\"}}' {first}/kv/hello");
    println!("  curl {other}/kv/hello");
    println!("  curl {first}/cluster/status");
    println!("  {raftkv} put hello world{nodes_flag}");
    println!("  {raftkv} get hello{nodes_flag}");
    println!("  {raftkv} status{nodes_flag}");
    println!(
        "Logs: tail -f {}/node-*.log   (RUST_LOG=debug for more)",
        args.data_dir.display()
    );
    println!("Waiting for a leader...");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(nodes: u16, base: u16) -> LocalClusterArgs {
        LocalClusterArgs {
            nodes,
            base_port: base,
            data_dir: PathBuf::from("/d"),
            cluster_id: None,
            leader_timeout_s: 30,
        }
    }

    #[test]
    fn plan_assigns_consecutive_ports_and_dirs() {
        let p = plan(&args(3, 8001)).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].id, "node-3");
        assert_eq!(p[2].port, 8003);
        assert_eq!(p[2].data_dir, PathBuf::from("/d/node-3"));
        assert_eq!(p[2].log_file, PathBuf::from("/d/node-3.log"));
        assert!(plan(&args(3, 65534)).is_err());
        assert!(plan(&args(1, 0)).is_err());
    }

    #[test]
    fn start_args_name_every_other_node_and_parse() {
        let p = plan(&args(3, 9001)).unwrap();
        let a = start_args(&p[1], &p, Some("c1"));
        let mut argv = vec!["raftkv".to_string()];
        argv.extend(a);
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(&argv).unwrap();
        let crate::cli::Command::Start(s) = cli.command else {
            panic!("{argv:?}")
        };
        let cfg = s.to_node_config().unwrap();
        assert_eq!(cfg.node_id, "node-2");
        assert_eq!(cfg.port, 9002);
        let peers: Vec<(Option<String>, String)> =
            cfg.peers.into_iter().map(|p| (p.name, p.addr)).collect();
        assert_eq!(
            peers,
            vec![
                (Some("node-1".into()), "127.0.0.1:9001".into()),
                (Some("node-3".into()), "127.0.0.1:9003".into())
            ]
        );
        assert_eq!(cfg.cluster_id.as_deref(), Some("c1"));
        assert_eq!(cfg.data_dir, PathBuf::from("/d/node-2"));
    }

    #[test]
    fn a_second_launcher_on_the_same_data_dir_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = LauncherLock::acquire(dir.path()).unwrap();
        let err = LauncherLock::acquire(dir.path()).err().expect("refused");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!(
                "in use by another local-cluster (pid {})",
                std::process::id()
            )),
            "{msg}"
        );
        assert!(msg.contains("--data-dir"), "{msg}");
        drop(first);
        // Released with the file (as when the process exits): free again.
        let again = LauncherLock::acquire(dir.path()).unwrap();
        drop(again);
    }

    #[test]
    fn a_node_dir_whose_database_is_locked_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("node-1");
        assert!(!node_dir_in_use(&node).unwrap(), "no database yet");
        std::fs::create_dir_all(&node).unwrap();
        let db = std::fs::File::create(node.join("db")).unwrap();
        assert!(!node_dir_in_use(&node).unwrap(), "nobody holds it");
        // sled holds an exclusive flock on `db` while a node runs.
        assert!(try_flock(&db).unwrap());
        assert!(node_dir_in_use(&node).unwrap());
        drop(db);
        assert!(!node_dir_in_use(&node).unwrap());
    }

    #[test]
    fn single_node_has_no_peers() {
        let p = plan(&args(1, 9001)).unwrap();
        let a = start_args(&p[0], &p, None);
        let i = a.iter().position(|s| s == "--peers").unwrap();
        assert_eq!(a[i + 1], "");
    }
}
