//! The node runtime: drives the consensus core with real time, storage and
//! network.
//!
//! ```text
//!   HTTP handlers (axum, many tasks)           peers' /raft/* RPCs
//!        │ proposals  │ reads                        │ messages
//!        ▼            ▼                              ▼
//!   ┌──────────────── Raft loop (own thread) ─────────────────┐
//!   │ tick · step · propose(batch) · read_index(batch)        │
//!   │ Ready: install snapshot → save+fsync → queue messages → │
//!   │        apply → release reads → advance → compact        │
//!   └─────┬──────────────────────────┬──────────────────┬─────┘
//!         │ status (watch)           │ per-peer queues  │ replies to
//!         ▼                          ▼                  ▼ waiting handlers
//!   /health, /cluster/*        sender task per peer (HTTP, kept alive)
//! ```
//!
//! * [`membership`]: names/addresses → core ids, cluster id.
//! * [`handle`]: what the server holds ([`NodeHandle`]).
//! * `raft_loop`: the loop itself; `transport`: the peer senders.
//! * [`wire`]: RPC bodies.

pub mod handle;
pub mod membership;
mod raft_loop;
mod snapshot;
mod transport;
pub mod wire;

use std::collections::HashMap;
use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::raft::{Config, InitialState, RaftError, RaftNode};
use crate::storage::sled_store::{KvCheck, KvCheckStatus, StoreOptions};
use crate::storage::{LogStore, SledStore, StateMachine, StorageError};

pub use handle::{KvReader, NodeHandle, NodeStatus, ReadError, RpcReject, WriteError};
pub use membership::{Member, Membership};
pub use snapshot::{ChunkReject, ReceiveProgress};
pub(crate) use transport::error_chain;

/// One peer as given on the command line: `name=host:port`, or the bare
/// `host:port` form (then `name` is `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    /// The peer's node id, when given.
    pub name: Option<String>,
    /// Where the peer listens, `host:port`.
    pub addr: String,
}

/// Everything `raftkv start` configures.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id, e.g. `node-1`.
    pub node_id: String,
    /// Bind address.
    pub host: String,
    /// Port for the client API and Raft RPCs.
    pub port: u16,
    /// `host:port` that peers and clients are told; defaults to host:port.
    pub advertise: Option<String>,
    /// The other members.
    pub peers: Vec<PeerSpec>,
    /// Where the sled database lives.
    pub data_dir: PathBuf,
    /// Cluster id carried by every RPC and recorded in the data dir; when
    /// `None`, derived from the member set (the same on every member).
    pub cluster_id: Option<String>,
    /// Heartbeat interval.
    pub heartbeat_ms: u64,
    /// Minimum election timeout; each timeout is drawn from [min, 2·min).
    pub election_timeout_ms: u64,
    /// Applied entries between snapshots (0 = never snapshot).
    pub snapshot_threshold: u64,
    /// How long a client request may wait for commit before a 503.
    pub request_timeout_ms: u64,
    /// sled's page cache, in MiB (`--cache-mb`). The node's resident
    /// memory is a multiple of it (see
    /// [`crate::storage::sled_store::CACHE_CAPACITY`]).
    pub cache_mb: u64,
    /// Verify the key-value tree in the background instead of before
    /// serving ([`KvCheck::Background`]): restart in O(log tail) instead of
    /// O(data), at the price of serving (never a damaged record, since every
    /// read verifies its own) before a damaged cold record is found. Off by
    /// default: the contract says a node never starts serving on damaged
    /// state.
    pub kv_check_in_background: bool,
}

/// Default `--port`.
pub const DEFAULT_PORT: u16 = 8001;
/// Default `--heartbeat-ms`.
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;
/// Default `--election-timeout-ms` (the minimum; timeouts are drawn from
/// [min, 2·min)).
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 1000;
/// Default `--snapshot-threshold`.
pub const DEFAULT_SNAPSHOT_THRESHOLD: u64 = 10_000;
/// Default request timeout.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5000;
/// Default `--cache-mb`: the store's default sled cache.
pub const DEFAULT_CACHE_MB: u64 = crate::storage::sled_store::CACHE_CAPACITY >> 20;

impl NodeConfig {
    /// A one-node configuration with every default: `127.0.0.1:8001`, data
    /// in `./data/<node_id>`, the contract's default timings.
    pub fn new(node_id: impl Into<String>) -> Self {
        let node_id = node_id.into();
        NodeConfig {
            data_dir: PathBuf::from("./data").join(&node_id),
            node_id,
            host: "127.0.0.1".into(),
            port: DEFAULT_PORT,
            advertise: None,
            peers: Vec::new(),
            cluster_id: None,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_timeout_ms: DEFAULT_ELECTION_TIMEOUT_MS,
            snapshot_threshold: DEFAULT_SNAPSHOT_THRESHOLD,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            cache_mb: DEFAULT_CACHE_MB,
            kv_check_in_background: false,
        }
    }
}

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Storage failed or is damaged.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The data dir cannot be used (damaged, foreign, locked).
    #[error("cannot use data dir {path}: {problem}")]
    DataDir {
        /// The data dir.
        path: String,
        /// What is wrong with it (in the message, not a `source`, so that
        /// printing the error chain does not repeat it).
        problem: StorageError,
    },
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The consensus core refused the recovered state or configuration.
    #[error("cannot start consensus: {0}")]
    Raft(#[from] RaftError),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {problem}")]
    Bind {
        /// Address tried.
        addr: String,
        /// Why it failed.
        problem: std::io::Error,
    },
    /// Binding or serving failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An internal task died.
    #[error("internal error: {0}")]
    Fatal(String),
}

/// How wall-clock settings map onto the core's ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Length of one tick.
    pub tick: Duration,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
    /// Minimum election timeout in ticks.
    pub election_ticks: u32,
}

impl Timing {
    /// Maps `--heartbeat-ms` / `--election-timeout-ms` onto ticks. A tick
    /// is the heartbeat, but at most a tenth of the election timeout so
    /// that the timeout keeps some randomisation granularity.
    pub fn from_config(c: &NodeConfig) -> Result<Timing, NodeError> {
        if c.heartbeat_ms == 0 {
            return Err(NodeError::Config(
                "--heartbeat-ms must be at least 1".into(),
            ));
        }
        if c.election_timeout_ms <= c.heartbeat_ms {
            return Err(NodeError::Config(format!(
                "--election-timeout-ms ({}) must be larger than --heartbeat-ms ({})",
                c.election_timeout_ms, c.heartbeat_ms
            )));
        }
        if c.request_timeout_ms == 0 {
            return Err(NodeError::Config(
                "the request timeout must be at least 1 ms".into(),
            ));
        }
        let tick_ms = c.heartbeat_ms.min(c.election_timeout_ms / 10).max(1);
        let heartbeat_ticks = ((c.heartbeat_ms + tick_ms / 2) / tick_ms).max(1);
        let election_ticks = (c.election_timeout_ms / tick_ms).max(heartbeat_ticks + 1);
        let to_u32 = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| NodeError::Config(format!("{what} is too large")))
        };
        Ok(Timing {
            tick: Duration::from_millis(tick_ms),
            heartbeat_ticks: to_u32(heartbeat_ticks, "--heartbeat-ms")?,
            election_ticks: to_u32(election_ticks, "--election-timeout-ms")?,
        })
    }
}

/// Runs a node until `shutdown` resolves (SIGTERM/SIGINT in the binary), then
/// stops accepting, fails in-flight requests, flushes and returns.
///
/// Errors that stop the node before it serves (bad configuration, a data
/// dir that is damaged or belongs to another node or cluster, a port in
/// use) come back as typed [`NodeError`]s whose messages name the file or
/// tree and the problem.
pub async fn run(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let membership = Membership::resolve(&config)?;
    let timing = Timing::from_config(&config)?;
    // Bind before touching the data dir: a port in use must not leave a
    // freshly initialised data dir behind.
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .map_err(|problem| NodeError::Bind {
            addr: format!("{}:{}", config.host, config.port),
            problem,
        })?;
    // By default every key-value record is verified before serving (the
    // contract: never serve on damaged state). With the opt-in background
    // check, `serve` stops the node if that check finds a damaged record.
    let options = StoreOptions {
        cache_bytes: config.cache_mb.saturating_mul(1 << 20),
        kv_check: if config.kv_check_in_background {
            KvCheck::Background
        } else {
            KvCheck::AtOpen
        },
    };
    let store = SledStore::open_with(
        &config.data_dir,
        &membership.self_name,
        &membership.cluster_id,
        options,
    )
    .map_err(|e| data_dir_error(&config.data_dir, e))?;
    let reader: Arc<dyn KvReader> = Arc::new(store.clone());
    serve(
        config, membership, timing, listener, store, reader, shutdown,
    )
    .await
}

/// Resolves only if the background check of the key-value tree finds a
/// damaged record (the store already refuses writes then): the node stops
/// with that error, as when the Raft loop meets a damaged record. Polls
/// the store's status every 100 ms and stops polling once the check passed.
async fn kv_check_failure(store: SledStore, data_dir: String) -> NodeError {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        every.tick().await;
        match store.kv_check_status() {
            KvCheckStatus::Running => {}
            KvCheckStatus::Passed => {
                drop(store);
                return std::future::pending().await;
            }
            failed @ KvCheckStatus::Failed(_) => {
                return NodeError::DataDir {
                    path: data_dir,
                    problem: failed
                        .error()
                        .unwrap_or_else(|| StorageError::Io("key-value check failed".into())),
                }
            }
        }
    }
}

/// Adds the data dir to storage errors that do not name it already.
fn data_dir_error(dir: &std::path::Path, e: StorageError) -> NodeError {
    match e {
        StorageError::IdentityMismatch { .. } => NodeError::Storage(e),
        other => NodeError::DataDir {
            path: dir.display().to_string(),
            problem: other,
        },
    }
}

impl KvReader for SledStore {
    fn get(&self, key: &str) -> Result<Option<(String, u64)>, StorageError> {
        StateMachine::get(self, key)
    }
    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<crate::kv::KvItem>, bool), StorageError> {
        StateMachine::scan(self, prefix, after, limit)
    }
}

/// Runs a node on an already opened store. `reader` must read the same
/// data the store's [`StateMachine`] writes.
pub(crate) async fn serve(
    config: NodeConfig,
    membership: Membership,
    timing: Timing,
    listener: tokio::net::TcpListener,
    store: SledStore,
    reader: Arc<dyn KvReader>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let data_dir = config.data_dir.display().to_string();
    let kv_check = kv_check_failure(store.clone(), data_dir.clone());
    let recovered = store.load().map_err(|problem| NodeError::DataDir {
        path: data_dir.clone(),
        problem,
    })?;
    let applied = store.applied_index();
    if applied < recovered.snapshot.index {
        return Err(NodeError::DataDir {
            path: data_dir,
            problem: StorageError::Inconsistent(format!(
                "the state machine is at index {applied}, behind the snapshot at {}",
                recovered.snapshot.index
            )),
        });
    }
    let mut raft_config = Config::new(membership.self_id, membership.voters());
    raft_config.heartbeat_ticks = timing.heartbeat_ticks;
    raft_config.election_ticks = timing.election_ticks;
    let init = InitialState {
        hard_state: recovered.hard_state,
        snapshot: recovered.snapshot,
        entries: recovered.entries,
        applied,
    };
    let node = RaftNode::new(raft_config, init, rand::random())?;

    let bind_addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| format!("{}:{}", config.host, config.port));

    let unspecified = matches!(config.host.as_str(), "0.0.0.0" | "::" | "[::]");
    if unspecified && config.advertise.is_none() {
        warn!(
            advertise = membership.self_addr(),
            "listening on all interfaces without --advertise: peers and clients will be \
             told an address they cannot reach"
        );
    }
    info!(
        node = %membership.self_name,
        listen = %bind_addr,
        advertise = %membership.self_addr(),
        cluster = %membership.cluster_id,
        members = membership.members.len(),
        data_dir = %data_dir,
        "node starting"
    );

    // Channels into the Raft loop. Bounded: a full queue pushes back on
    // HTTP handlers, never on the loop.
    let (proposal_tx, proposal_rx) = mpsc::channel(65536);
    let (read_tx, read_rx) = mpsc::channel(65536);
    let (inbound_tx, inbound_rx) = mpsc::channel(4096);
    let (status_tx, status_rx) = watch::channel(NodeStatus::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    let peer_health: HashMap<_, _> = membership
        .peers()
        .map(|p| (p.id, Arc::new(handle::PeerHealth::default())))
        .collect();
    let request_timeout = Duration::from_millis(config.request_timeout_ms);
    let max_election = timing.tick * timing.election_ticks * 2;
    let handle = NodeHandle {
        shared: Arc::new(handle::Shared {
            membership: membership.clone(),
            learned_names: RwLock::new(HashMap::new()),
            proposals: proposal_tx,
            reads: read_tx,
            inbound: inbound_tx.clone(),
            status: status_rx,
            reader,
            peer_health: peer_health.clone(),
            request_timeout,
            // Long enough for one election with some retries.
            leader_wait: request_timeout.min(max_election * 2),
            stopping: AtomicBool::new(false),
            snapshots: snapshot::SnapshotReceiver::new(Some(store.clone())),
        }),
    };

    let transport = transport::Transport::start(
        &membership,
        &peer_health,
        inbound_tx,
        tokio::runtime::Handle::current(),
        transport::TransportTiming {
            rpc_timeout: (timing.tick * timing.election_ticks)
                .clamp(Duration::from_millis(500), Duration::from_secs(5)),
            // Generous: the first chunk may wait for the receiver to clear
            // the leftovers of an earlier transfer.
            snapshot_chunk_timeout: Duration::from_secs(60),
            max_backoff: (timing.tick * timing.election_ticks / 2)
                .clamp(Duration::from_millis(50), Duration::from_secs(1)),
        },
        stop_rx.clone(),
    );
    let names = membership
        .members
        .iter()
        .map(|m| (m.id, m.name.clone().unwrap_or_else(|| m.addr.clone())))
        .collect();
    let settings = raft_loop::LoopSettings {
        tick: timing.tick,
        snapshot_threshold: config.snapshot_threshold,
        names,
    };

    // The loop gets a thread and a single-threaded runtime of its own: its
    // fsyncs and sled calls block, and must block nothing else.
    let (done_tx, mut done_rx) = oneshot::channel::<Result<(), StorageError>>();
    let loop_stop = stop_rx.clone();
    std::thread::Builder::new()
        .name("raft-loop".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = done_tx.send(Err(StorageError::Io(format!(
                        "cannot start the raft loop runtime: {e}"
                    ))));
                    return;
                }
            };
            let mut raft_loop = raft_loop::RaftLoop::new(
                node,
                store,
                transport,
                settings,
                proposal_rx,
                read_rx,
                inbound_rx,
                status_tx,
            );
            let mut result = rt.block_on(raft_loop.run(loop_stop));
            let store = raft_loop.into_store();
            if let Err(e) = store.flush() {
                if result.is_ok() {
                    result = Err(e);
                }
            }
            drop(store);
            let _ = done_tx.send(result);
        })?;

    let (trigger_tx, mut trigger_rx) = watch::channel(false);
    let app = crate::server::router(crate::server::AppState::new(handle.clone()));
    // TCP_NODELAY on every accepted connection (axum leaves Nagle on): a
    // response written while the previous one on the same connection is
    // still unacknowledged (pipelined Raft RPCs) would otherwise wait for
    // the peer's delayed ACK, up to 40 ms.
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = trigger_rx.wait_for(|v| *v).await;
    });
    let mut serve_task = tokio::spawn(server.into_future());

    tokio::pin!(shutdown);
    let early: Option<Result<(), NodeError>> = tokio::select! {
        _ = &mut shutdown => {
            info!("shutdown requested: no longer accepting requests");
            None
        }
        r = &mut done_rx => Some(match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NodeError::Storage(e)),
            Err(_) => Err(NodeError::Fatal("the raft loop panicked".into())),
        }),
        e = kv_check => Some(Err(e)),
        r = &mut serve_task => Some(match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NodeError::Io(e)),
            Err(e) => Err(NodeError::Fatal(format!("the HTTP server task failed: {e}"))),
        }),
    };
    if let Some(Err(e)) = &early {
        error!(error = %e, "node stopping");
    }
    if early.is_none() {
        // A leader that is asked to stop hands over first (while it still
        // answers RPCs), so the cluster is not left waiting an election
        // timeout for a new one. Bounded: the core gives up after one.
        let within = Duration::from_millis(config.election_timeout_ms + 200);
        let started = std::time::Instant::now();
        if handle.hand_over_leadership(within).await {
            info!(
                ms = started.elapsed().as_millis() as u64,
                "leadership handed over"
            );
        }
    }
    handle.set_stopping();
    let _ = trigger_tx.send(true);

    // Let requests already in flight finish for a moment, then fail
    // whatever still waits and stop the loop.
    let drain = Duration::from_millis(1000).min(request_timeout);
    let server_done = tokio::time::timeout(drain, &mut serve_task).await.is_ok();
    let _ = stop_tx.send(true);
    let loop_result = match early {
        Some(r) => r,
        None => match done_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NodeError::Storage(e)),
            Err(_) => Err(NodeError::Fatal("the raft loop panicked".into())),
        },
    };
    if !server_done {
        let grace = request_timeout + Duration::from_secs(2);
        if tokio::time::timeout(grace, &mut serve_task).await.is_err() {
            warn!("in-flight requests did not finish in time; closing their connections");
            serve_task.abort();
        }
    }
    if loop_result.is_ok() {
        info!("node stopped cleanly");
    }
    loop_result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_timing_matches_the_contract() {
        let t = Timing::from_config(&NodeConfig::new("n")).unwrap();
        // 100 ms heartbeat, election timeout drawn from [1000, 2000) ms.
        assert_eq!(t.tick, Duration::from_millis(100));
        assert_eq!(t.heartbeat_ticks, 1);
        assert_eq!(t.election_ticks, 10);
    }

    #[test]
    fn short_test_timings_keep_granularity() {
        let mut c = NodeConfig::new("n");
        c.heartbeat_ms = 50;
        c.election_timeout_ms = 300;
        let t = Timing::from_config(&c).unwrap();
        assert_eq!(t.tick, Duration::from_millis(30));
        assert_eq!(t.heartbeat_ticks, 2);
        assert_eq!(t.election_ticks, 10);
        c.election_timeout_ms = 50;
        assert!(matches!(Timing::from_config(&c), Err(NodeError::Config(_))));
        c.heartbeat_ms = 0;
        assert!(Timing::from_config(&c).is_err());
    }

    #[test]
    fn defaults() {
        let c = NodeConfig::new("node-7");
        assert_eq!(c.data_dir, PathBuf::from("./data/node-7"));
        assert_eq!(c.port, 8001);
        assert!(c.heartbeat_ms <= 100);
    }
}
