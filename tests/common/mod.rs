//! A harness for tests that drive real `raftkv start` processes: free
//! loopback ports, a temporary data dir per node, stderr captured to a file
//! per node (printed when a test fails), SIGKILL / SIGTERM / restart by PID,
//! and every child killed in `Drop` so a failing test leaves nothing behind.
//!
//! Waiting is always condition polling with a bounded deadline.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Helpers for the etcd v3 JSON API (ranges at a revision, SSE watches).
pub mod v3;

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_raftkv")
}

/// Reserves `n` distinct free loopback ports (all held open together so
/// they differ, then released for the nodes to bind).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// How the nodes are started.
#[derive(Clone, Debug)]
pub struct Opts {
    /// `--heartbeat-ms`.
    pub heartbeat_ms: u64,
    /// `--election-timeout-ms`.
    pub election_timeout_ms: u64,
    /// `--peers` in the bare `localhost:port` form instead of `name=addr`.
    pub bare_peers: bool,
    /// Extra flags for every node.
    pub extra: Vec<String>,
}

impl Default for Opts {
    /// The binary's default timing: short timeouts would make the tests
    /// faster but turn CPU or fsync stalls on a busy CI machine into
    /// spurious elections.
    fn default() -> Self {
        Opts {
            heartbeat_ms: 50,
            election_timeout_ms: 1000,
            bare_peers: false,
            extra: Vec::new(),
        }
    }
}

/// One node process (maybe not running).
pub struct Node {
    /// `--node-id`.
    pub name: String,
    /// `--port`.
    pub port: u16,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// Where its stderr goes (appended across restarts).
    pub log_path: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process (it must not be running).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open log file");
        let child = Command::new(binary())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn raftkv start");
        self.child = Some(child);
    }

    /// PID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL (kill -9) and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("node is running");
        // SAFETY: plain kill(2) on the PID of our own child.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait().expect("wait for child") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{} did not exit within {within:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("node was started");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait().expect("wait for child") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{} did not exit within {within:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the node wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Replaces the command-line arguments used by the next `start`.
    pub fn set_args(&mut self, args: Vec<String>) {
        self.args = args;
    }

    /// The command-line arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A set of node processes sharing one temporary directory.
pub struct Cluster {
    /// The nodes, `node-1` first.
    pub nodes: Vec<Node>,
    /// The HTTP client tests use.
    pub client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Builds (without starting) `n` nodes on free ports.
    pub fn new(n: usize, opts: &Opts) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(n);
        let names: Vec<String> = (1..=n).map(|i| format!("node-{i}")).collect();
        let nodes = (0..n)
            .map(|i| {
                let peers: Vec<String> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| {
                        if opts.bare_peers {
                            format!("localhost:{}", ports[j])
                        } else {
                            format!("{}=127.0.0.1:{}", names[j], ports[j])
                        }
                    })
                    .collect();
                let data_dir = dir.path().join(&names[i]);
                let mut args = vec![
                    "start".to_string(),
                    "--node-id".into(),
                    names[i].clone(),
                    "--port".into(),
                    ports[i].to_string(),
                    "--peers".into(),
                    peers.join(","),
                    "--data-dir".into(),
                    data_dir.display().to_string(),
                    "--heartbeat-ms".into(),
                    opts.heartbeat_ms.to_string(),
                    "--election-timeout-ms".into(),
                    opts.election_timeout_ms.to_string(),
                ];
                args.extend(opts.extra.iter().cloned());
                Node {
                    name: names[i].clone(),
                    port: ports[i],
                    log_path: dir.path().join(format!("{}.log", names[i])),
                    data_dir,
                    args,
                    child: None,
                }
            })
            .collect();
        Cluster {
            nodes,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            dir,
        }
    }

    /// Builds and starts `n` nodes.
    pub fn start(n: usize, opts: &Opts) -> Cluster {
        let mut c = Cluster::new(n, opts);
        for node in &mut c.nodes {
            node.start();
        }
        c
    }

    /// The shared temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Base URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Waits until every running node reports the same leader; returns the
    /// leader's index in `nodes`.
    pub async fn wait_for_leader(&mut self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.agreed_leader().await {
                return i;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("no agreed leader within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn agreed_leader(&mut self) -> Option<usize> {
        let mut leader: Option<String> = None;
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect();
        for &i in &running {
            let v = self.get_json(i, "/cluster/status").await.ok()?.1;
            let l = v["leader_id"].as_str()?.to_string();
            match &leader {
                None => leader = Some(l),
                Some(prev) if *prev != l => return None,
                _ => {}
            }
        }
        let leader = leader?;
        let i = self.nodes.iter().position(|n| n.name == leader)?;
        // The leader must itself be running and say so.
        let v = self.get_json(i, "/cluster/status").await.ok()?.1;
        (v["role"] == "leader").then_some(i)
    }

    /// GET returning status and JSON body.
    pub async fn get_json(&self, i: usize, path: &str) -> Result<(u16, Value), reqwest::Error> {
        let r = self
            .client
            .get(format!("{}{path}", self.url(i)))
            .send()
            .await?;
        let status = r.status().as_u16();
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, v))
    }

    /// PUT /kv/{key} returning status and JSON body.
    pub async fn put(
        &self,
        i: usize,
        key: &str,
        value: &str,
    ) -> Result<(u16, Value), reqwest::Error> {
        put_at(&self.client, &self.url(i), key, value, None).await
    }

    /// Prints every node's log (call before panicking).
    pub fn dump_logs(&self) {
        for n in &self.nodes {
            eprintln!("===== {} (port {}) =====\n{}", n.name, n.port, n.log());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// `PUT base/kv/{key}[?cas=]` with `{"value": value}`.
pub async fn put_at(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    value: &str,
    cas: Option<u64>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut url = format!("{base}/kv/{}", encode_key(key));
    if let Some(c) = cas {
        url.push_str(&format!("?cas={c}"));
    }
    let r = client
        .put(url)
        .json(&serde_json::json!({ "value": value }))
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json::<Value>().await.unwrap_or(Value::Null)))
}

/// `GET base/kv/{key}` (linearizable unless `stale`).
pub async fn get_at(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    stale: bool,
) -> Result<(u16, Value), reqwest::Error> {
    let mut url = format!("{base}/kv/{}", encode_key(key));
    if stale {
        url.push_str("?consistency=stale");
    }
    let r = client.get(url).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json::<Value>().await.unwrap_or(Value::Null)))
}

/// Percent-encodes a key for a URL path (keeping `/`).
pub fn encode_key(key: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.');
    percent_encoding::utf8_percent_encode(key, SET).to_string()
}

/// Polls `check` until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every item of `GET base/kv` (all pages), as `(key, value, index)`;
/// `stale` reads the node's own state machine.
pub async fn list_all(
    client: &reqwest::Client,
    base: &str,
    stale: bool,
) -> Result<Vec<(String, String, u64)>, String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{base}/kv?prefix=&limit=1000");
        if let Some(a) = &after {
            url.push_str("&after=");
            url.push_str(&encode_key(a));
        }
        if stale {
            url.push_str("&consistency=stale");
        }
        let r = client.get(url).send().await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("list answered {status}: {v}"));
        }
        let items = v["items"].as_array().ok_or("no items")?;
        for it in items {
            out.push((
                it["key"].as_str().ok_or("key")?.to_string(),
                it["value"].as_str().ok_or("value")?.to_string(),
                it["index"].as_u64().ok_or("index")?,
            ));
        }
        if v["more"] != Value::Bool(true) {
            return Ok(out);
        }
        after = out.last().map(|i| i.0.clone());
    }
}
