//! The Raft consensus core: a pure, deterministic state machine.
//!
//! No I/O, no clock, no threads, no async. Time arrives as [`RaftNode::tick`]
//! calls, the network as [`RaftNode::step`] calls, clients as
//! [`RaftNode::propose`] / [`RaftNode::read_index`]; randomness comes from a
//! seed the caller passes in. What the node wants done comes out as a
//! [`Ready`] (see its docs for the order the runtime must follow). The same
//! code runs in the real node (`crate::node`, with sled and HTTP around it)
//! and in the deterministic simulation (`crate::sim`).
//!
//! It implements the extended Raft paper and the parts of Ongaro's
//! dissertation a production store needs: PreVote and CheckQuorum with
//! leader stickiness (§9.6), fast log backtracking (§5.3), the current-term
//! commit rule (§5.4.2), ReadIndex reads (§6.4), batched proposals and
//! pipelined, flow-controlled replication, and the core side of log
//! compaction and InstallSnapshot (§7).
//!
//! # Module map
//!
//! | file | what lives there |
//! |---|---|
//! | `types.rs` | wire and storage types: [`Entry`], [`HardState`], [`Message`], [`Ready`], … (serde, so bincode carries them) |
//! | `node.rs` | [`RaftNode`] itself, its public API, the Ready hand-off (`has_ready` / `ready` / `advance`), [`Config`], [`Status`] |
//! | `election.rs` | terms and roles, term handling of every incoming message, PreVote, RequestVote, CheckQuorum, leader stickiness |
//! | `replication.rs` | AppendEntries on both sides, the commit rule, heartbeats, InstallSnapshot, ReadIndex confirmation |
//! | `log.rs` | the in-memory log after the snapshot, with the persist/commit/apply cursors |
//! | [`quorum`] | majority arithmetic over a configuration of voters: commit index, vote tallies, CheckQuorum, ReadIndex confirmation |
//! | `progress.rs` | the leader's per-peer flow control: Probe / Replicate / Snapshot states and the inflight window |
//! | `read_only.rs` | pending ReadIndex reads and their heartbeat rounds |
//! | `rng.rs` | the seeded xorshift generator behind randomized election timeouts |
//!
//! # Driving a node
//!
//! ```text
//! loop {
//!     on timer:        node.tick()
//!     on RPC:          node.step(message)
//!     on client write: node.propose(batch)     → (first_index, term)
//!     on client read:  node.read_index(ctx)
//!     while node.has_ready() {
//!         let rd = node.ready();
//!         send rd.early_messages (a leader's appends: may overlap the fsync)
//!         install rd.snapshot; persist rd.hard_state + rd.entries (fsync)
//!         send rd.messages
//!         apply rd.committed_entries; answer rd.read_states
//!         node.advance();
//!     }
//! }
//! ```
//!
//! # The life of one write, from proposal to apply
//!
//! 1. **Propose** (leader). The runtime collects client writes and calls
//!    [`RaftNode::propose`] with the whole batch. The core appends one entry
//!    per command to its in-memory log at the current term and returns where
//!    they landed ([`ProposeOutcome`]). Nothing is sent yet: the peers'
//!    progress entries are only marked dirty, so every proposal made before
//!    the next Ready shares the same messages.
//! 2. **First Ready** (leader). [`RaftNode::ready`] hands out the new
//!    entries to persist and, built right then, one AppendEntries per
//!    follower carrying them (as many as `max_entries_per_msg` /
//!    `max_bytes_per_msg` allow, at most `max_inflight` unacknowledged
//!    messages per follower in Replicate state). The runtime fsyncs the
//!    entries, sends the messages and calls [`RaftNode::advance`]; only now
//!    does the leader count its own copy toward a majority (its `persisted`
//!    cursor moves).
//! 3. **Follower**. [`RaftNode::step`] runs the consistency check at
//!    `prev_log_index` / `prev_log_term`. On a match it truncates any
//!    conflicting uncommitted suffix, stores the entries, and queues a
//!    success reply naming the highest index it now shares with the leader.
//!    On a mismatch it replies with a conflict hint (term and first index of
//!    that term) so the leader can skip a whole term per round trip. The
//!    reply leaves in the same Ready as the entries, after the runtime made
//!    them durable: an acknowledgement always means "on disk".
//! 4. **Commit** (leader). Each reply moves that follower's `match_index`.
//!    The leader takes the index a majority of the voters' match indexes
//!    has reached (its own = `persisted`;
//!    [`quorum::VoterSet::quorum_index`]); it commits it only if that
//!    entry is of the current term (§5.4.2: older entries commit indirectly, which is
//!    why every new leader appends a no-op). Followers learn the new commit
//!    index with the next AppendEntries or heartbeat.
//! 5. **Apply**. The next Ready carries the newly committed entries in
//!    `committed_entries`, every one of them already persisted locally. The
//!    runtime applies them in order to the state machine and answers the
//!    client whose proposal sits at that index *with that term* (a different
//!    term there means the proposal was overwritten by a new leader and
//!    failed). Then `advance()`, and the cycle continues.
//!
//! A linearizable read takes a shorter path: [`RaftNode::read_index`]
//! records the commit index (once the leader's no-op is committed), the
//! next heartbeat round carries a round id, and when a majority has echoed
//! it the read comes out in [`Ready::read_states`] in the Ready whose
//! applied entries cover its index — see `read_only.rs`.
//!
//! After a crash the runtime rebuilds the node from its durable state
//! ([`InitialState`]); committed entries past what the state machine had
//! applied come out of the first Readys again.

mod election;
mod log;
mod node;
mod progress;
pub mod quorum;
mod read_only;
mod replication;
mod rng;
mod types;

#[cfg(test)]
mod tests;

pub use node::{Config, InitialState, PeerStatus, ProposeOutcome, RaftError, RaftNode, Status};
pub use types::*;
