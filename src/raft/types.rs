//! The values that flow in and out of the consensus core: log entries, hard
//! state, messages, and the [`Ready`] batch of work handed to the runtime.
//!
//! Everything here derives `serde` so that the runtime can carry it with
//! bincode (over `/raft/*` RPCs and into storage records) without a second
//! set of wire types.

use serde::{Deserialize, Serialize};

/// A node's identity inside the consensus core.
///
/// The runtime maps human node names (`node-1`) and addresses onto these
/// numbers; the core only ever compares them.
pub type NodeId = u64;

/// Sentinel for "no node" (no leader known, no vote cast).
pub const NO_NODE: NodeId = 0;

/// What a log entry carries.
///
/// Format (bincode 2 standard, see [`crate::storage::record`]): variant
/// index as a varint (0 `Noop`, 1 `Command`); a `Command` then has its
/// bytes as a varint length and the raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by every new leader at the start of its term (§5.4.2 / §8): once
    /// it commits, all earlier entries are committed too, and ReadIndex may
    /// serve reads.
    Noop,
    /// An opaque command for the state machine (a bincode-encoded
    /// [`crate::kv::Command`] in RaftKV). Encoded as one byte string
    /// (`serde_bytes`), not byte by byte: the same bincode layout, several
    /// times cheaper to write and read on every RPC and log record.
    Command(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// One entry of the replicated log.
///
/// Format: `index` and `term` as varints, then the [`EntryPayload`]. Stored
/// in batches in the sled log (see `src/storage/sled_store/log.rs`) and
/// sent in [`MessageBody::AppendEntries`]; no version of its own (the data
/// dir's format version and the wire version cover it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, starting at 1.
    pub index: u64,
    /// Term of the leader that created the entry.
    pub term: u64,
    /// What the entry carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// Approximate size in bytes, used to bound message and batch sizes.
    pub fn approx_size(&self) -> usize {
        24 + match &self.payload {
            EntryPayload::Noop => 0,
            EntryPayload::Command(c) => c.len(),
        }
    }
}

/// The state that must be durable before any message that depends on it is
/// sent (Raft paper, Figure 2, "persistent state on all servers").
///
/// Format: `term`, `vote`, `commit` as varints, in that order (stored as a
/// checksummed record, see `HARD_STATE_KEY` in the sled store).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: u64,
    /// Candidate voted for in `term`, or [`NO_NODE`].
    pub vote: NodeId,
    /// Highest index known committed. Persisting it is an optimisation (a
    /// restart can re-apply up to it at once); safety never depends on it.
    pub commit: u64,
}

/// Describes a snapshot: the state machine as of `index`, whose log prefix
/// up to and including `index` may be discarded.
///
/// Format: `index`, then `term`, as varints (stored as a checksummed
/// record under `snapshot/meta`, and as the applied index in a key-value
/// tree; sent inside [`MessageBody::InstallSnapshot`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Last log index covered by the snapshot.
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
}

/// Role of a node (Raft paper §5.1; the pre-candidate step is PreVote, §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Passive: answers leaders and candidates.
    Follower,
    /// Running a PreVote round; its term has not been bumped yet.
    PreCandidate,
    /// Running a real election in a new term.
    Candidate,
    /// Accepts proposals and replicates them.
    Leader,
}

impl Role {
    /// The contract's lower-case name: `leader`, `follower` or `candidate`
    /// (a pre-candidate reports `candidate`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate | Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// A message between two nodes. Every message carries the sender's term;
/// the receiver handles terms before looking at the body (§5.1).
///
/// Format: `from`, `to`, `term` as varints, then the [`MessageBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// Sender's term (for PreVote requests: the term the sender *would* use).
    pub term: u64,
    /// What the message says.
    pub body: MessageBody,
}

/// The RPCs of Raft and their replies.
///
/// Format: the variant index as a varint, in declaration order (0
/// `PreVote`, 1 `PreVoteResponse`, 2 `RequestVote`, 3
/// `RequestVoteResponse`, 4 `AppendEntries`, 5 `AppendEntriesResponse`, 6
/// `InstallSnapshot`, 7 `InstallSnapshotResponse`, 8 `TimeoutNow`), then
/// the variant's fields in declaration order: integers as varints, `bool`
/// as one byte, `entries` as a varint count and the [`Entry`]s. A new
/// variant must be added at the end, and still needs a wire version bump
/// (an older peer cannot decode it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// PreVote request (§9.6): "would you vote for me in `term`?" Does not
    /// change the receiver's term or vote.
    PreVote {
        /// Index of the candidate's last log entry.
        last_log_index: u64,
        /// Term of the candidate's last log entry.
        last_log_term: u64,
    },
    /// Reply to [`MessageBody::PreVote`].
    PreVoteResponse {
        /// Whether the vote would be granted.
        granted: bool,
    },
    /// RequestVote (§5.2).
    RequestVote {
        /// Index of the candidate's last log entry.
        last_log_index: u64,
        /// Term of the candidate's last log entry.
        last_log_term: u64,
        /// The election was started by the leader's [`MessageBody::TimeoutNow`]
        /// (leadership transfer): voters skip leader stickiness for it, since
        /// the leader they would be protecting asked for the election.
        transfer: bool,
    },
    /// Reply to [`MessageBody::RequestVote`].
    RequestVoteResponse {
        /// Whether the vote was granted.
        granted: bool,
    },
    /// AppendEntries (§5.3); also serves as heartbeat when `entries` is empty.
    AppendEntries {
        /// Index of the entry just before `entries`.
        prev_log_index: u64,
        /// Term of the entry at `prev_log_index`.
        prev_log_term: u64,
        /// Entries to store (may be empty).
        entries: Vec<Entry>,
        /// Leader's commit index.
        leader_commit: u64,
        /// ReadIndex round this message confirms leadership for (0 = none).
        read_ctx: u64,
    },
    /// Reply to [`MessageBody::AppendEntries`].
    AppendEntriesResponse {
        /// True when the consistency check passed and the entries are stored.
        success: bool,
        /// On success: the highest index known to match the leader's log.
        /// On failure: the follower's last log index.
        match_index: u64,
        /// On failure, fast-backtracking hint (§5.3, "the follower can include
        /// the term of the conflicting entry and the first index it stores for
        /// that term"): the term at `prev_log_index` in the follower's log, or
        /// 0 when the follower's log is shorter.
        conflict_term: u64,
        /// On failure: first index of `conflict_term` in the follower's log,
        /// or `last_index + 1` when the log is shorter.
        conflict_index: u64,
        /// Echo of the request's `read_ctx`.
        read_ctx: u64,
    },
    /// InstallSnapshot: the leader tells a follower to install the snapshot
    /// `meta`. The core sends only the metadata; the runtime streams the data
    /// in checksummed chunks and steps this message into the follower's core
    /// once the image is staged.
    InstallSnapshot {
        /// The snapshot to install.
        meta: SnapshotMeta,
    },
    /// Reply to [`MessageBody::InstallSnapshot`].
    InstallSnapshotResponse {
        /// An index up to which the follower's log now matches the
        /// leader's (its commit index after handling the snapshot).
        last_index: u64,
        /// Whether the snapshot was accepted (or was already covered).
        success: bool,
    },
    /// Leadership transfer: the receiver should start an election at once,
    /// skipping PreVote.
    TimeoutNow,
}

impl MessageBody {
    /// True for request bodies a node must answer only after its hard state
    /// and log are durable (votes and append acknowledgements).
    pub fn is_response(&self) -> bool {
        matches!(
            self,
            MessageBody::PreVoteResponse { .. }
                | MessageBody::RequestVoteResponse { .. }
                | MessageBody::AppendEntriesResponse { .. }
                | MessageBody::InstallSnapshotResponse { .. }
        )
    }
}

/// A linearizable read released by the core: the read identified by
/// `ctx` may be answered from the state machine once it has applied at least
/// `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadState {
    /// The caller's identifier, as given to `read_index`.
    pub ctx: u64,
    /// Commit index the read must observe.
    pub index: u64,
}

/// Everything one step of the core asks the runtime to do, in this order
/// (the etcd-raft "Ready" contract):
///
/// 0. `early_messages` may be sent right away, before (or while) the rest
///    is persisted: they are a leader's AppendEntries, which a leader may
///    send in parallel with writing the same entries to its own disk
///    (Raft thesis §10.2.1). That is safe because the leader counts its own
///    copy toward commit only after `advance` (so only once durable), and
///    the term and vote they carry were made durable before the node became
///    leader. Sending them later, with `messages`, is also correct.
/// 1. If `snapshot` is set, install it (state machine and log switch to it
///    atomically).
/// 2. Persist `entries` (delete every stored entry with index ≥
///    `entries[0].index`, then append) together with `hard_state`, and make
///    both durable (fsync). Only then may anything below happen.
/// 3. Send `messages`.
/// 4. Apply `committed_entries` in order to the state machine.
/// 5. Answer `read_states`: each may be answered once the state machine has
///    applied `ReadState::index` — which holds once step 4 is done.
/// 6. Call `RaftNode::advance`.
///
/// Steps 4 and 5 may also run before step 2 when
/// [`Ready::can_apply_before_persist`] holds: every committed entry was then
/// made durable by an earlier Ready, so nothing applied depends on this
/// Ready's writes. A leader uses this to answer the writes that just
/// committed without waiting for the fsync of the next batch.
///
/// One Ready at a time: `ready()` again before `advance()` returns an empty
/// Ready. `messages` never include one addressed to the node itself.
/// `hard_state` is set when the term or vote changed (which must be durable
/// before the messages go out), or alongside new entries or a snapshot;
/// a change of the commit index alone does not cost a flush of its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Snapshot to install before anything else (followers only).
    pub snapshot: Option<SnapshotMeta>,
    /// Hard state to persist, when it changed.
    pub hard_state: Option<HardState>,
    /// Entries to persist (may overwrite a conflicting suffix).
    pub entries: Vec<Entry>,
    /// A leader's AppendEntries, which may be sent before `entries` and
    /// `hard_state` are durable (see step 0 above).
    pub early_messages: Vec<Message>,
    /// Messages to send once the above is durable.
    pub messages: Vec<Message>,
    /// Entries now committed, to apply in order.
    pub committed_entries: Vec<Entry>,
    /// ReadIndex reads that may be answered after applying `committed_entries`.
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// True when `committed_entries` may be applied (and `read_states`
    /// answered) before `entries` and `hard_state` are persisted: no
    /// snapshot is pending, and every committed entry lies below the first
    /// entry to persist, so an earlier Ready already made it durable here.
    pub fn can_apply_before_persist(&self) -> bool {
        if self.snapshot.is_some() {
            return false;
        }
        match (self.committed_entries.last(), self.entries.first()) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(c), Some(e)) => c.index < e.index,
        }
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.hard_state.is_none()
            && self.entries.is_empty()
            && self.early_messages.is_empty()
            && self.messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
    }
}
