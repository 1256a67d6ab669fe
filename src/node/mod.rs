//! The node runtime: drives the consensus core with real time, storage and
//! network. (Stub: filled in by the runtime's author.)

use std::path::PathBuf;

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
    /// Cluster id carried by every RPC and recorded in the data dir.
    pub cluster_id: Option<String>,
    /// Heartbeat interval.
    pub heartbeat_ms: u64,
    /// Minimum election timeout; each timeout is drawn from [min, 2·min).
    pub election_timeout_ms: u64,
    /// Applied entries between snapshots.
    pub snapshot_threshold: u64,
    /// How long a client request may wait for commit before a 503.
    pub request_timeout_ms: u64,
}

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Storage failed or is damaged.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Binding or serving failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs a node until `shutdown` resolves (SIGTERM/SIGINT in the binary), then
/// stops accepting, fails in-flight requests, flushes and returns.
pub async fn run(
    _config: NodeConfig,
    _shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    todo!()
}
