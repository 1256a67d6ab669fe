//! [`RaftNode`]: the consensus state machine and its public interface.
//!
//! This file holds the public types, the node's state, the entry points
//! (`tick`, `step`, `propose`, `read_index`) and the [`Ready`] hand-off.
//! The protocol itself lives in two sibling files that add `impl RaftNode`
//! blocks: [`super::election`] (roles, terms, votes) and
//! [`super::replication`] (AppendEntries, commit, snapshots, ReadIndex).

use super::log::RaftLog;
use super::progress::{Progress, ProgressState};
use super::quorum::VoterSet;
use super::read_only::ReadOnly;
use super::rng::Rng;
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

    /// Checks that the configuration can work.
    pub fn validate(&self) -> Result<(), RaftError> {
        let bad = |s: &str| Err(RaftError::InvalidConfig(s.to_string()));
        if self.id == NO_NODE {
            return bad("node id 0 is reserved for \"no node\"");
        }
        if !self.voters.contains(&self.id) {
            return bad("the node's own id must be one of the voters");
        }
        if self.voters.contains(&NO_NODE) {
            return bad("voter id 0 is reserved for \"no node\"");
        }
        let mut sorted = self.voters.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.voters.len() {
            return bad("voter ids must be distinct");
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return bad("need 0 < heartbeat_ticks < election_ticks");
        }
        if self.max_inflight == 0 || self.max_entries_per_msg == 0 || self.max_bytes_per_msg == 0 {
            return bad("max_inflight, max_entries_per_msg and max_bytes_per_msg must be > 0");
        }
        Ok(())
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
    /// For an empty batch nothing is appended and this is the index the next
    /// entry will get.
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
    /// Per-peer progress (every other voter); leaders only, empty otherwise.
    pub peers: Vec<PeerStatus>,
}

/// What the Ready being handled will have done once `advance` is called.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadyStamp {
    /// `apply_cursor` after the Ready's committed entries.
    pub(crate) applied_to: u64,
}

/// One Raft node's consensus state machine.
///
/// Pure and deterministic: the same config, initial state, seed and call
/// sequence always produce the same Readys. See the [module
/// docs](crate::raft) for how a runtime drives it.
///
/// # Ready protocol
///
/// One Ready at a time: after [`RaftNode::ready`], [`RaftNode::has_ready`]
/// is false and `ready` returns an empty Ready until [`RaftNode::advance`].
/// Between the two the runtime may keep calling `tick`, `step`, `propose`,
/// `read_index` and the `report_*` methods; whatever they produce comes out
/// in the next Ready.
pub struct RaftNode {
    /// Static configuration (validated).
    pub(crate) cfg: Config,
    /// Who votes, and what a majority of them is (see [`super::quorum`]).
    pub(crate) voters: VoterSet,
    /// Current term (persistent).
    pub(crate) term: u64,
    /// Vote cast in `term` (persistent), or [`NO_NODE`].
    pub(crate) vote: NodeId,
    /// Known leader of `term`, or [`NO_NODE`].
    pub(crate) leader: NodeId,
    /// Current role.
    pub(crate) role: Role,
    /// The log and its cursors.
    pub(crate) log: RaftLog,
    /// Leader: one entry per other voter, in `cfg.voters` order.
    pub(crate) progress: Vec<Progress>,
    /// (Pre)candidate: responses so far, `(voter, granted)`.
    pub(crate) votes: Vec<(NodeId, bool)>,
    /// Ticks since the last election reset (followers: since hearing from
    /// the leader or granting a vote; leaders: since the last CheckQuorum).
    pub(crate) election_elapsed: u32,
    /// Leader: ticks since the last heartbeat.
    pub(crate) heartbeat_elapsed: u32,
    /// This round's election timeout, in `[election_ticks, 2·election_ticks)`.
    pub(crate) randomized_timeout: u32,
    /// Source of the randomized timeouts.
    pub(crate) rng: Rng,
    /// Messages waiting for the next Ready.
    pub(crate) msgs: Vec<Message>,
    /// ReadIndex bookkeeping (leader only).
    pub(crate) read_only: ReadOnly,
    /// Follower: a snapshot to hand out in the next Ready.
    pub(crate) pending_snapshot: Option<SnapshotMeta>,
    /// Hard state last handed out (or recovered).
    pub(crate) prev_hard_state: HardState,
    /// The Ready being handled by the runtime, if any.
    pub(crate) outstanding: Option<ReadyStamp>,
    /// Scratch space for quorum computations (no allocation per message).
    pub(crate) scratch: Vec<u64>,
    /// Leader: the peer leadership is being handed to, and the ticks since
    /// the transfer began (it is abandoned after an election timeout).
    pub(crate) transfer: Option<(NodeId, u32)>,
}

impl RaftNode {
    /// Builds a node from its config, recovered state and RNG seed.
    ///
    /// The node starts as a follower of no one. Committed entries after
    /// `init.applied` (known from `hard_state.commit`) come out of the first
    /// Readys again, so a runtime whose state machine lagged behind the log
    /// at a crash catches up by itself.
    pub fn new(config: Config, init: InitialState, seed: u64) -> Result<Self, RaftError> {
        config.validate()?;
        let bad = |s: String| Err(RaftError::InvalidState(s));
        let snap = init.snapshot;
        let mut expect = snap.index + 1;
        let mut prev_term = snap.term;
        for e in &init.entries {
            if e.index != expect {
                return bad(format!(
                    "log not contiguous: expected index {expect}, found {}",
                    e.index
                ));
            }
            if e.term < prev_term {
                return bad(format!(
                    "term goes backwards at index {} ({} after {prev_term})",
                    e.index, e.term
                ));
            }
            if e.term > init.hard_state.term {
                return bad(format!(
                    "entry {} has term {} beyond the persisted term {}",
                    e.index, e.term, init.hard_state.term
                ));
            }
            prev_term = e.term;
            expect += 1;
        }
        let last = expect - 1;
        if snap.term > init.hard_state.term {
            return bad(format!(
                "snapshot term {} beyond the persisted term {}",
                snap.term, init.hard_state.term
            ));
        }
        if init.applied < snap.index {
            return bad(format!(
                "applied index {} is below the snapshot index {}",
                init.applied, snap.index
            ));
        }
        if init.applied > last {
            return bad(format!(
                "applied index {} is beyond the last log index {last}",
                init.applied
            ));
        }
        let vote = init.hard_state.vote;
        if vote != NO_NODE && !config.voters.contains(&vote) {
            return bad(format!("persisted vote for {vote}, which is not a voter"));
        }
        // The persisted commit is a hint (it may lag, and it can never be
        // trusted beyond the durable log); what was applied was committed.
        let commit = init.hard_state.commit.min(last).max(init.applied);
        let log = RaftLog::recovered(snap, init.entries, commit, init.applied);
        let mut node = RaftNode {
            term: init.hard_state.term,
            vote,
            leader: NO_NODE,
            role: Role::Follower,
            log,
            progress: Vec::new(),
            votes: Vec::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_timeout: config.election_ticks,
            rng: Rng::new(seed ^ config.id.rotate_left(32)),
            msgs: Vec::new(),
            read_only: ReadOnly::default(),
            pending_snapshot: None,
            prev_hard_state: init.hard_state,
            outstanding: None,
            scratch: Vec::with_capacity(config.voters.len()),
            transfer: None,
            voters: VoterSet::new(config.voters.clone()),
            cfg: config,
        };
        node.reset_election_timer();
        Ok(node)
    }

    /// Advances logical time by one tick: followers and candidates count
    /// toward their election timeout; leaders send heartbeats every
    /// `heartbeat_ticks` and run CheckQuorum every `election_ticks`.
    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
    }

    /// Handles one message from a peer. Messages for another node, from
    /// this node itself or from a non-voter are ignored, as are malformed
    /// ones (the core never panics on input).
    pub fn step(&mut self, msg: Message) {
        if msg.to != self.cfg.id || msg.from == self.cfg.id || !self.is_voter(msg.from) {
            return;
        }
        self.step_checked(msg);
    }

    /// Appends a batch of commands to the leader's log, all in one go: they
    /// share one persistence round and go out to followers in as few
    /// AppendEntries as the size limits allow (messages are built when the
    /// next Ready is taken, so proposals made between two Readys are
    /// batched together too).
    ///
    /// An empty batch appends nothing.
    pub fn propose(&mut self, commands: Vec<Vec<u8>>) -> Result<ProposeOutcome, RaftError> {
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if self.transfer.is_some() {
            // New entries would only delay the target's catching up.
            return Err(RaftError::TransferInProgress);
        }
        let first_index = self.log.last_index() + 1;
        if commands.is_empty() {
            return Ok(ProposeOutcome {
                first_index,
                term: self.term,
            });
        }
        for (k, cmd) in commands.into_iter().enumerate() {
            self.log.append(Entry {
                index: first_index + k as u64,
                term: self.term,
                payload: EntryPayload::Command(cmd),
            });
        }
        self.mark_all_dirty();
        Ok(ProposeOutcome {
            first_index,
            term: self.term,
        })
    }

    /// Leader: hands leadership to `target`, or to the most up-to-date
    /// peer when `None` (Raft thesis §3.10). Proposals are refused with
    /// [`RaftError::TransferInProgress`] meanwhile; once the target's log
    /// matches ours it is sent [`MessageBody::TimeoutNow`] and starts an
    /// election at once, which its up-to-date log wins. The transfer is
    /// abandoned (proposals accepted again) if this node is still leader an
    /// election timeout later. Returns the chosen target.
    pub fn transfer_leadership(&mut self, target: Option<NodeId>) -> Result<NodeId, RaftError> {
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        let target = match target {
            Some(t) if self.progress.iter().any(|p| p.id == t) => t,
            Some(t) => {
                return Err(RaftError::InvalidConfig(format!(
                    "cannot transfer leadership to {t}: not a peer"
                )))
            }
            None => self
                .progress
                .iter()
                .max_by_key(|p| (p.match_index, p.recent_active))
                .map(|p| p.id)
                .ok_or_else(|| {
                    RaftError::InvalidConfig("a one-node cluster has no one to transfer to".into())
                })?,
        };
        self.transfer = Some((target, 0));
        self.maybe_send_timeout_now(target);
        Ok(target)
    }

    /// The peer a leadership transfer is handing over to, if one is under way.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.map(|(t, _)| t)
    }

    /// Starts a ReadIndex read identified by `ctx`; it comes out in a later
    /// [`Ready::read_states`] once leadership is confirmed by a heartbeat
    /// round and the read's index is being applied. Reads are dropped
    /// silently if the node loses leadership first (watch [`RaftNode::role`]
    /// and [`RaftNode::term`] to fail them).
    pub fn read_index(&mut self, ctx: u64) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if !self.noop_committed() {
            self.read_only.wait_for_noop(ctx);
        } else {
            self.start_read(ctx);
        }
        Ok(())
    }

    /// True when [`RaftNode::ready`] has something to hand out (always
    /// false while a Ready is outstanding).
    pub fn has_ready(&self) -> bool {
        if self.outstanding.is_some() {
            return false;
        }
        if self.pending_snapshot.is_some()
            || self.term != self.prev_hard_state.term
            || self.vote != self.prev_hard_state.vote
            || self.log.has_unstable()
            || !self.msgs.is_empty()
            || self.log.has_committed_to_apply()
            || self
                .read_only
                .has_releasable(self.log.apply_cursor.max(self.log.commit))
        {
            return true;
        }
        if self.role == Role::Leader {
            if self.read_only.needs_broadcast {
                return true;
            }
            let (last, commit) = (self.log.last_index(), self.log.commit);
            return self
                .progress
                .iter()
                .any(|p| p.dirty && p.wants_send(last, commit));
        }
        false
    }

    /// Takes the pending work. Handle it in the order documented on
    /// [`Ready`], then call [`RaftNode::advance`].
    pub fn ready(&mut self) -> Ready {
        if self.outstanding.is_some() {
            return Ready::default();
        }
        if self.role == Role::Leader {
            self.flush_sends();
        }
        let mut rd = Ready {
            snapshot: self.pending_snapshot.take(),
            entries: self.log.take_unstable(),
            ..Ready::default()
        };
        let hs = self.hard_state();
        let prev = self.prev_hard_state;
        // The term and vote a leader's appends carry are durable already
        // (they were persisted before it campaigned) unless this very Ready
        // changes them; only then may its appends skip ahead of the fsync.
        let appends_early =
            self.role == Role::Leader && hs.term == prev.term && hs.vote == prev.vote;
        // A commit-only change is not worth a flush of its own: the commit
        // index is a restart hint, so it rides along with the next write.
        if hs.term != prev.term
            || hs.vote != prev.vote
            || (hs.commit != prev.commit && (!rd.entries.is_empty() || rd.snapshot.is_some()))
        {
            rd.hard_state = Some(hs);
            self.prev_hard_state = hs;
        }
        rd.messages = std::mem::take(&mut self.msgs);
        if appends_early {
            let (early, rest): (Vec<Message>, Vec<Message>) = rd
                .messages
                .into_iter()
                .partition(|m| matches!(m.body, MessageBody::AppendEntries { .. }));
            rd.early_messages = early;
            rd.messages = rest;
        }
        rd.committed_entries = self
            .log
            .take_committed(self.cfg.max_entries_per_msg, self.cfg.max_bytes_per_msg);
        rd.read_states = self.read_only.release(self.log.apply_cursor);
        self.outstanding = Some(ReadyStamp {
            applied_to: self.log.apply_cursor,
        });
        rd
    }

    /// Tells the core the last Ready was fully handled (persisted, sent,
    /// applied). A leader may now count its own newly durable entries
    /// toward commit.
    pub fn advance(&mut self) {
        let Some(stamp) = self.outstanding.take() else {
            return;
        };
        self.log.applied = self.log.applied.max(stamp.applied_to);
        self.log.persisted_in_flight();
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// The runtime took a snapshot at `meta` (≤ applied): drop the log
    /// prefix up to it. Compacting to an index at or below the current
    /// snapshot does nothing.
    pub fn compact(&mut self, meta: SnapshotMeta) -> Result<(), RaftError> {
        let err = |reason: String| {
            Err(RaftError::Compaction {
                index: meta.index,
                reason,
            })
        };
        if meta.index <= self.log.snapshot().index {
            return Ok(());
        }
        if meta.index > self.log.applied {
            return err(format!("beyond the applied index {}", self.log.applied));
        }
        match self.log.term_at(meta.index) {
            Some(t) if t == meta.term => {}
            other => {
                return err(format!(
                    "term {} does not match the log's term {other:?}",
                    meta.term
                ))
            }
        }
        self.log.compact(meta);
        Ok(())
    }

    /// The runtime finished (or failed) streaming a snapshot to `peer`. On
    /// success the peer is probed right after the snapshot; on failure the
    /// leader retries after the next heartbeat reply.
    pub fn report_snapshot(&mut self, peer: NodeId, success: bool) {
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.progress_mut(peer) else {
            return;
        };
        if pr.state != ProgressState::Snapshot {
            return;
        }
        let next = if success {
            pr.pending_snapshot + 1
        } else {
            pr.match_index + 1
        };
        pr.become_probe(next);
        // Wait for the next heartbeat reply before probing, so a peer that
        // is down is not flooded with snapshot retries.
        pr.probe_sent = true;
    }

    /// A message to `peer` could not be delivered: stop streaming to it
    /// optimistically and probe again.
    pub fn report_unreachable(&mut self, peer: NodeId) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.progress_mut(peer) {
            if pr.state == ProgressState::Replicate {
                let next = pr.match_index + 1;
                pr.become_probe(next);
                pr.dirty = true;
            }
        }
    }

    /// Current status.
    pub fn status(&self) -> Status {
        Status {
            id: self.cfg.id,
            role: self.role,
            term: self.term,
            leader: self.leader(),
            commit_index: self.log.commit,
            applied_index: self.log.applied,
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            snapshot_index: self.log.snapshot().index,
            peers: if self.role == Role::Leader {
                self.progress
                    .iter()
                    .map(|p| PeerStatus {
                        id: p.id,
                        match_index: p.match_index,
                        next_index: p.next_index,
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Current leader, if known.
    pub fn leader(&self) -> Option<NodeId> {
        (self.leader != NO_NODE).then_some(self.leader)
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// Commit index (cheaper than [`RaftNode::status`]).
    pub fn commit_index(&self) -> u64 {
        self.log.commit
    }

    /// Applied index as acknowledged through [`RaftNode::advance`].
    pub fn applied_index(&self) -> u64 {
        self.log.applied
    }

    /// Index of the last log entry (held in memory, maybe not yet durable).
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }

    /// The latest snapshot (the compacted log prefix).
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        self.log.snapshot()
    }

    /// Term of the log entry at `index`, if the log still holds it (the
    /// snapshot's own index counts). For diagnostics and the simulation's
    /// checkers.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        self.log.term_at(index)
    }

    // ----- shared helpers for the protocol files -----

    /// The hard state as it stands.
    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.commit,
        }
    }

    /// True when `id` is a voting member.
    pub(crate) fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(id)
    }

    /// The error a non-leader returns to clients.
    pub(crate) fn not_leader(&self) -> RaftError {
        RaftError::NotLeader {
            leader: self.leader(),
        }
    }

    /// Queues a message to `to` at the current term.
    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        debug_assert_ne!(to, self.cfg.id, "never message ourselves");
        self.msgs.push(Message {
            from: self.cfg.id,
            to,
            term: self.term,
            body,
        });
    }

    /// The leader's progress entry for `peer`.
    pub(crate) fn progress_mut(&mut self, peer: NodeId) -> Option<&mut Progress> {
        self.progress.iter_mut().find(|p| p.id == peer)
    }

    /// Marks every peer as possibly having something to send.
    pub(crate) fn mark_all_dirty(&mut self) {
        for p in &mut self.progress {
            p.dirty = true;
        }
    }
}
