//! A real 3-node cluster in this process, end to end: three node runtimes
//! (sled on temporary dirs, fsync on, default flags) serving HTTP on
//! loopback, and puts of 100-byte values through the client API, with 1
//! and 64 requests in flight. Each iteration is one acknowledged (committed
//! and applied) write.
//!
//! ```sh
//! cargo bench --bench cluster
//! ```
//!
//! The side-by-side comparison with etcd is `benches/compare_etcd.sh`; this
//! bench is the quick, in-repository measure of the whole write path.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raftkv::node::{NodeConfig, PeerSpec};
use tokio::sync::watch;

struct Cluster {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    urls: Vec<String>,
    stop: watch::Sender<bool>,
    _dirs: Vec<tempfile::TempDir>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Cluster {
    fn start() -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let names: Vec<String> = (1..=3).map(|i| format!("node-{i}")).collect();
        let dirs: Vec<tempfile::TempDir> = (0..3)
            .map(|_| tempfile::tempdir().expect("temp dir"))
            .collect();
        let (stop, stop_rx) = watch::channel(false);
        for i in 0..3 {
            let mut cfg = NodeConfig::new(names[i].clone());
            cfg.port = ports[i];
            cfg.data_dir = dirs[i].path().to_path_buf();
            cfg.peers = (0..3)
                .filter(|&j| j != i)
                .map(|j| PeerSpec {
                    name: Some(names[j].clone()),
                    addr: format!("127.0.0.1:{}", ports[j]),
                })
                .collect();
            let mut rx = stop_rx.clone();
            rt.spawn(async move {
                let shutdown = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = raftkv::daemon::run(cfg, shutdown).await {
                    eprintln!("node stopped: {e}");
                }
            });
        }
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("http client");
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let mut cluster = Cluster {
            rt,
            client,
            urls,
            stop,
            _dirs: dirs,
        };
        cluster.wait_for_leader();
        cluster
    }

    /// Finds the leader (bounded wait) and puts its URL first.
    fn wait_for_leader(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no leader within 30 s");
            let url = self.urls[0].clone();
            let client = self.client.clone();
            let leader = self.rt.block_on(async move {
                let st: serde_json::Value = client
                    .get(format!("{url}/cluster/status"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                st.get("leader_url")?.as_str().map(str::to_string)
            });
            if let Some(l) = leader {
                if let Some(i) = self.urls.iter().position(|u| *u == l) {
                    self.urls.swap(0, i);
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `n` puts with `conns` in flight, all to the leader; returns the time.
    fn puts(&self, n: u64, conns: u64, seq: &Arc<AtomicU64>) -> Duration {
        let leader = self.urls[0].clone();
        let client = self.client.clone();
        let seq = seq.clone();
        self.rt.block_on(async move {
            let next = Arc::new(AtomicU64::new(0));
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..conns.min(n) {
                let (client, leader, next, seq) =
                    (client.clone(), leader.clone(), next.clone(), seq.clone());
                tasks.push(tokio::spawn(async move {
                    let body = serde_json::json!({ "value": "v".repeat(100) }).to_string();
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let k = seq.fetch_add(1, Ordering::Relaxed) % 1000;
                        let resp = client
                            .put(format!("{leader}/kv/bench-{k}"))
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await
                            .expect("put sent");
                        assert_eq!(resp.status(), 200, "put answered");
                        let _ = resp.bytes().await;
                    }
                }));
            }
            for t in tasks {
                t.await.expect("put task");
            }
            started.elapsed()
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn bench_puts(c: &mut Criterion) {
    let cluster = Cluster::start();
    let seq = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group("cluster_put");
    group.throughput(Throughput::Elements(1));
    for &conns in &[1u64, 64] {
        group.bench_with_input(BenchmarkId::new("in_flight", conns), &conns, |b, &conns| {
            b.iter_custom(|iters| cluster.puts(iters, conns, &seq))
        });
    }
    group.finish();
    drop(cluster);
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_puts
}
criterion_main!(benches);
