//! The node runtime: the Raft loop that drives the consensus core with
//! storage, peers and time, and the handle the rest of the process uses.
//!
//! ```text
//!   server (HTTP handlers)                    transport (peers' /raft/* RPCs)
//!        │ NodeHandle: proposals, reads            │ Inbox: messages, staged
//!        │ status, hand-over                        │ snapshots, send reports
//!        ▼                                          ▼
//!   ┌────────────── RaftLoop (sync, deterministic) ─────────────┐
//!   │ on_tick · on_inbound · on_proposal · on_read · on_control │
//!   │ round(): propose(batch) · read_index(batch) · Ready:      │
//!   │   early send → apply if durable → install → save+fsync →  │
//!   │   send → apply → release reads → advance → compact        │
//!   └──────┬──────────────────┬──────────────────────┬──────────┘
//!          │ NodeStore        │ PeerTransport        │ Clock
//!        sled | memory      HTTP | simulated net    tokio | virtual
//! ```
//!
//! * [`raft_loop`]: [`RaftLoop`], the only code that interprets a
//!   [`crate::raft::Ready`]. Generic over the storage
//!   ([`crate::storage::NodeStore`]), the transport ([`PeerTransport`]) and
//!   the clock ([`Clock`]) — see [`mod@env`].
//! * `driver`: the production driver, a tokio `select!` on a thread of its
//!   own that only feeds the loop; the simulation (`crate::sim`) drives the
//!   same loop in virtual time.
//! * [`handle`]: [`NodeHandle`] (what the server holds), [`Inbox`] (what
//!   the transport delivers into), and the values between them.
//! * [`membership`]: names/addresses → core ids, cluster id.
//! * [`observer`]: what the loop tells about applied changes
//!   ([`observer::ApplyObserver`]) and the stored history watchers catch up
//!   from ([`observer::EventHistory`]).
//! * [`watch`]: the watch hub ([`watch::WatchHub`]), the observer that fans
//!   applied events out to watchers and catches slow or late ones up from
//!   history.
//!
//! The node knows neither HTTP server nor peer transport: the process
//! (`crate::daemon`) opens the store, prepares a node ([`PreparedNode`]),
//! builds the transport around its [`Inbox`] and the server around its
//! [`NodeHandle`], then starts it ([`PreparedNode::start`]).

pub mod compaction;
mod driver;
pub mod env;
pub mod handle;
pub mod membership;
pub mod observer;
pub mod raft_loop;
pub mod watch;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch as status_watch};

use crate::raft::{Config, InitialState, RaftError, RaftNode};
use crate::storage::{NodeStore, StorageError};

pub use driver::LoopFailure;
pub use env::{Clock, LoopInput, PeerTransport, SystemClock};
pub use handle::{
    Applied, Control, ExportError, ExportSource, Inbound, Inbox, IncomingSnapshot, KvReader,
    LoopStopped, NoPeerInfo, NodeHandle, NodeStatus, PeerInfo, Proposal, ReadError, ReadRequest,
    ReaderHistory, ReceiveProgress, SnapshotExport, SnapshotExporter, StoreExporter, StoreReader,
    Unavailable, Uncertain, WriteError,
};
pub use membership::{Member, Membership};
pub use raft_loop::{LoopSettings, RaftLoop};

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
    /// serving (`KvCheck::Background` of the sled store): restart in O(log tail) instead of
    /// O(data), at the price of serving (never a damaged record, since every
    /// read verifies its own) before a damaged cold record is found. Off by
    /// default: the contract says a node never starts serving on damaged
    /// state.
    pub kv_check_in_background: bool,
    /// The leader's automatic history compaction
    /// (`--auto-compaction-mode`, `--auto-compaction-retention`).
    pub auto_compaction: compaction::AutoCompaction,
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
            auto_compaction: compaction::AutoCompaction::Off,
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
    /// Serving failed, or a thread could not be started.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The Raft loop's thread could not run.
    #[error(transparent)]
    Loop(LoopFailure),
    /// The Raft loop panicked.
    #[error("internal error: the raft loop panicked")]
    LoopPanicked,
    /// The HTTP server's task failed.
    #[error("internal error: the HTTP server task failed: {0}")]
    ServerTask(#[source] tokio::task::JoinError),
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

/// Builds the consensus core from what `store` recovered.
pub fn recover_core<S: NodeStore>(
    store: &S,
    membership: &Membership,
    timing: Timing,
    seed: u64,
) -> Result<RaftNode, NodeError> {
    let recovered = store.load()?;
    let applied = store.applied_index();
    if applied < recovered.snapshot.index {
        return Err(NodeError::Storage(StorageError::Inconsistent(format!(
            "the state machine is at index {applied}, behind the snapshot at {}",
            recovered.snapshot.index
        ))));
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
    Ok(RaftNode::new(raft_config, init, seed)?)
}

/// A node whose consensus core is recovered and whose handle exists, but
/// whose loop is not running yet: build the transport around
/// [`PreparedNode::inbox`] and the server around [`PreparedNode::handle`],
/// then [`PreparedNode::start`] it.
pub struct PreparedNode<S: NodeStore> {
    handle: NodeHandle,
    inbox: Inbox<S::Staged>,
    core: RaftNode,
    store: S,
    channels: driver::LoopChannels<S::Staged>,
    status_tx: status_watch::Sender<NodeStatus>,
    tick: Duration,
    snapshot_threshold: u64,
    auto_compaction: compaction::AutoCompaction,
    watch: watch::WatchHub,
}

impl<S> PreparedNode<S>
where
    S: NodeStore + Send + 'static,
    S::Staged: Send,
{
    /// Recovers the core from `store` and creates the handle. `reader`
    /// must read the same data the store's state machine writes; `peers`
    /// is the transport's view of the peers (for status and names).
    pub fn prepare(
        config: &NodeConfig,
        membership: Membership,
        timing: Timing,
        store: S,
        reader: Arc<dyn KvReader>,
        peers: Arc<dyn PeerInfo>,
    ) -> Result<Self, NodeError> {
        let core = recover_core(&store, &membership, timing, rand::random())?;
        // Channels into the Raft loop. Bounded: a full queue pushes back on
        // HTTP handlers and the transport, never on the loop.
        let (proposal_tx, proposals) = mpsc::channel(65536);
        let (read_tx, reads) = mpsc::channel(65536);
        let (inbound_tx, inbound) = mpsc::channel(4096);
        let (control_tx, control) = mpsc::channel(16);
        let (status_tx, status_rx) = status_watch::channel(NodeStatus::default());
        let request_timeout = Duration::from_millis(config.request_timeout_ms);
        let max_election = timing.tick * timing.election_ticks * 2;
        let watch = watch::WatchHub::new(
            Arc::new(handle::ReaderHistory(reader.clone())),
            watch::WatchLimits::default(),
        );
        let handle = NodeHandle {
            shared: Arc::new(handle::Shared {
                membership,
                proposals: proposal_tx,
                reads: read_tx,
                control: control_tx,
                status: status_rx,
                reader,
                watch: watch.clone(),
                peers,
                request_timeout,
                // Long enough for one election with some retries.
                leader_wait: request_timeout.min(max_election * 2),
                stopping: AtomicBool::new(false),
                exporter: std::sync::OnceLock::new(),
            }),
        };
        Ok(PreparedNode {
            handle,
            inbox: Inbox { tx: inbound_tx },
            core,
            store,
            channels: driver::LoopChannels {
                proposals,
                reads,
                inbound,
                control,
            },
            status_tx,
            tick: timing.tick,
            snapshot_threshold: config.snapshot_threshold,
            auto_compaction: config.auto_compaction,
            watch,
        })
    }

    /// The handle (cheap to clone).
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Where the transport delivers what it receives.
    pub fn inbox(&self) -> Inbox<S::Staged> {
        self.inbox.clone()
    }

    /// Lets [`NodeHandle::export_snapshot`] read consistent views through
    /// `exporter` (a handle of the same store as the loop's, e.g.
    /// [`StoreExporter`] over a sled clone). Only the first call counts.
    pub fn set_snapshot_exporter(&self, exporter: Arc<dyn SnapshotExporter>) {
        let _ = self.handle.shared.exporter.set(exporter);
    }

    /// Starts the Raft loop on a thread of its own, with `transport`.
    pub fn start<T>(self, transport: T) -> Result<RunningNode, NodeError>
    where
        T: PeerTransport<S::Source> + Send + 'static,
    {
        let settings = LoopSettings {
            snapshot_threshold: self.snapshot_threshold,
            names: self.handle.names(),
            auto_compaction: self.auto_compaction,
        };
        let mut core = RaftLoop::new(
            self.core,
            self.store,
            transport,
            SystemClock,
            settings,
            Some(self.status_tx),
        );
        core.set_observer(Arc::new(self.watch));
        let (stop_tx, stop_rx) = status_watch::channel(false);
        let done = driver::spawn(core, self.channels, self.tick, stop_rx)?;
        Ok(RunningNode {
            handle: self.handle,
            stop_tx,
            done: Some(done),
        })
    }
}

/// A node whose loop runs. Dropping it stops the loop (without waiting).
pub struct RunningNode {
    handle: NodeHandle,
    stop_tx: status_watch::Sender<bool>,
    done: Option<oneshot::Receiver<Result<(), LoopFailure>>>,
}

fn loop_result(
    r: Result<Result<(), LoopFailure>, oneshot::error::RecvError>,
) -> Result<(), NodeError> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(LoopFailure::Storage(e))) => Err(NodeError::Storage(e)),
        Ok(Err(e @ LoopFailure::Runtime(_))) => Err(NodeError::Loop(e)),
        Err(_) => Err(NodeError::LoopPanicked),
    }
}

impl RunningNode {
    /// The node's handle.
    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    /// Resolves when the loop stopped by itself (a storage failure, or a
    /// panic); pending forever once [`RunningNode::stop`] consumed it.
    pub async fn stopped(&mut self) -> Result<(), NodeError> {
        match self.done.as_mut() {
            Some(done) => {
                let r = done.await;
                self.done = None;
                loop_result(r)
            }
            None => std::future::pending().await,
        }
    }

    /// Stops the loop: everyone still waiting is answered, the store is
    /// flushed. Returns how the loop ended.
    pub async fn stop(mut self) -> Result<(), NodeError> {
        self.handle.set_stopping();
        let _ = self.stop_tx.send(true);
        // Watchers end with a "stopped" cancel instead of hanging.
        self.handle.watch_hub().stop();
        match self.done.take() {
            Some(done) => loop_result(done.await),
            None => Ok(()),
        }
    }
}

/// The error with its causes, e.g. "error sending request: connection
/// refused" (for logs and error messages).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
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
