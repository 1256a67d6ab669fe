//! The consensus state machine. (Stub signatures: the core's author replaces
//! the bodies.)

use super::types::*;

/// Static configuration of one node's core.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (≠ [`NO_NODE`]).
    pub id: NodeId,
    /// Every voting member, including `id`.
    pub voters: Vec<NodeId>,
    /// Minimum election timeout in ticks; each timeout is drawn uniformly from
    /// `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u32,
    /// Heartbeat interval in ticks (must be < `election_ticks`).
    pub heartbeat_ticks: u32,
    /// Maximum AppendEntries in flight per peer in replicate state.
    pub max_inflight: usize,
    /// Maximum entries in one AppendEntries.
    pub max_entries_per_msg: usize,
    /// Soft byte limit of one AppendEntries (at least one entry is sent).
    pub max_bytes_per_msg: usize,
    /// Run a PreVote round before a real election (§9.6).
    pub pre_vote: bool,
    /// Leaders step down when they have not heard from a majority within an
    /// election timeout.
    pub check_quorum: bool,
}

impl Config {
    /// Defaults for a cluster of `voters`, with node `id`.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Self {
        Config {
            id,
            voters,
            election_ticks: 10,
            heartbeat_ticks: 1,
            max_inflight: 64,
            max_entries_per_msg: 4096,
            max_bytes_per_msg: 4 << 20,
            pre_vote: true,
            check_quorum: true,
        }
    }
}

/// What a node recovered from its storage at start.
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    /// Persisted term, vote and commit.
    pub hard_state: HardState,
    /// Latest snapshot (index 0 = none): the log starts after it.
    pub snapshot: SnapshotMeta,
    /// Persisted log entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Index the state machine has applied (≥ `snapshot.index`).
    pub applied: u64,
}

/// Where a batch of proposals landed in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProposeOutcome {
    /// Index of the first proposed command; the others follow contiguously.
    pub first_index: u64,
    /// Term of the entries: the proposal succeeded iff the entry applied at
    /// that index carries this term.
    pub term: u64,
}

/// Errors of the consensus core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    /// Only the leader accepts proposals and reads; `leader` is the known
    /// leader, if any, for the caller to forward to.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Current leader, if known.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is in progress; retry shortly.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// The configuration is unusable.
    #[error("invalid raft config: {0}")]
    InvalidConfig(String),
    /// The recovered state is inconsistent (e.g. a gap in the log).
    #[error("inconsistent initial state: {0}")]
    InvalidState(String),
    /// A compaction asked for an index the node cannot compact to.
    #[error("cannot compact to {index}: {reason}")]
    Compaction {
        /// Requested index.
        index: u64,
        /// Why.
        reason: String,
    },
}

/// Replication progress of one peer, as seen by the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Peer id.
    pub id: NodeId,
    /// Highest index known replicated on the peer.
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
}

/// A snapshot of a node's consensus state, for `/cluster/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Current role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// Known leader, if any.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index (as reported through `advance`).
    pub applied_index: u64,
    /// First index still in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Index of the latest snapshot.
    pub snapshot_index: u64,
    /// Per-peer progress; leaders only.
    pub peers: Vec<PeerStatus>,
}

/// One Raft node's consensus state machine.
pub struct RaftNode {
    _private: (),
}

impl RaftNode {
    /// Builds a node from its config, recovered state and RNG seed.
    pub fn new(_config: Config, _init: InitialState, _seed: u64) -> Result<Self, RaftError> {
        todo!()
    }
    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        todo!()
    }
    /// Handles one message from a peer. Messages for another node are ignored.
    pub fn step(&mut self, _msg: Message) {
        todo!()
    }
    /// Appends a batch of commands to the leader's log.
    pub fn propose(&mut self, _commands: Vec<Vec<u8>>) -> Result<ProposeOutcome, RaftError> {
        todo!()
    }
    /// Starts a ReadIndex read identified by `ctx`; it comes out in a later
    /// [`Ready::read_states`].
    pub fn read_index(&mut self, _ctx: u64) -> Result<(), RaftError> {
        todo!()
    }
    /// True when [`RaftNode::ready`] has something to hand out.
    pub fn has_ready(&self) -> bool {
        todo!()
    }
    /// Takes the pending work. Call [`RaftNode::advance`] once done.
    pub fn ready(&mut self) -> Ready {
        todo!()
    }
    /// Tells the core the last Ready was fully handled (persisted, sent, applied).
    pub fn advance(&mut self) {
        todo!()
    }
    /// The runtime took a snapshot at `meta` (≤ applied): drop the log prefix.
    pub fn compact(&mut self, _meta: SnapshotMeta) -> Result<(), RaftError> {
        todo!()
    }
    /// The runtime finished (or failed) streaming a snapshot to `peer`.
    pub fn report_snapshot(&mut self, _peer: NodeId, _success: bool) {
        todo!()
    }
    /// A message to `peer` could not be delivered.
    pub fn report_unreachable(&mut self, _peer: NodeId) {
        todo!()
    }
    /// Current status.
    pub fn status(&self) -> Status {
        todo!()
    }
    /// Current leader, if known.
    pub fn leader(&self) -> Option<NodeId> {
        todo!()
    }
    /// Current role.
    pub fn role(&self) -> Role {
        todo!()
    }
    /// Current term.
    pub fn term(&self) -> u64 {
        todo!()
    }
}
