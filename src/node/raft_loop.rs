//! The Raft loop: the one task that owns the consensus core and the write
//! side of the store.
//!
//! Each round it takes whatever has arrived — a tick, peer messages, and
//! *all* queued client proposals and reads — and feeds them to the core:
//! every proposal queued at that moment goes into a single
//! [`RaftNode::propose`] call, so a burst of writes shares one log append,
//! one fsync and one AppendEntries per peer (group commit). It then follows
//! the [`Ready`] contract to the letter:
//!
//! 0. a leader hands its AppendEntries to the peer queues at once, so
//!    the followers write while it writes (the core counts the leader's own
//!    copy only after `advance`, see [`Ready`]),
//! 1. install an incoming snapshot (staged beforehand, off the loop: see
//!    [`super::snapshot`]; here it is one pointer flip),
//! 2. persist hard state and entries (fsync) — nothing below happens first,
//! 3. hand the messages to the peer queues (never waiting on the network),
//! 4. apply committed entries and answer the writes waiting on them,
//! 5. answer the ReadIndex reads the core released,
//! 6. `advance`.
//!
//! It runs on a thread of its own (see [`super::run`]), so the fsyncs and
//! sled calls it makes block nothing but itself.
//!
//! Snapshots never stall it: compaction only syncs the key-value tree (the
//! tree *is* the snapshot) and drops the log prefix, and an image for a
//! follower is generated on a blocking thread from a
//! [`SnapshotSession`](crate::storage::SnapshotSession) that the loop opens
//! in an instant.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::kv::ApplyResult;
use crate::raft::{
    Entry, Message, MessageBody, NodeId, RaftError, RaftNode, ReadState, Ready, Role, SnapshotMeta,
};
use crate::storage::{LogStore, SledStore, StagedImage, StateMachine, StorageError};

use super::handle::{Inbound, NodeStatus, Proposal, ReadError, ReadRequest, WriteError};
use super::transport::Transport;

/// Most inbound events handled in one round before the core is drained.
const MAX_INBOUND_PER_ROUND: usize = 4096;
/// Most proposals batched into one `propose` call.
const MAX_PROPOSALS_PER_BATCH: usize = 8192;
/// Soft byte bound of one proposal batch.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Most reads collected into one ReadIndex round.
const MAX_READS_PER_ROUND: usize = 65536;
/// Longest a leader holds new proposals back while the acknowledgements of
/// its last, already durable, batch are on their way (see
/// [`RaftLoop::wait_for_acks`]). Followers started writing that batch when
/// the leader did, so their acks normally arrive well within this.
const ACK_WAIT: Duration = Duration::from_millis(2);

/// Static settings of the loop.
#[derive(Clone, Debug)]
pub(crate) struct LoopSettings {
    /// Interval of `RaftNode::tick`.
    pub tick: Duration,
    /// Applied entries between snapshots (0 = never).
    pub snapshot_threshold: u64,
    /// Display names of the members, for logs.
    pub names: HashMap<NodeId, String>,
}

struct Waiter {
    term: u64,
    reply: oneshot::Sender<Result<ApplyResult, WriteError>>,
}

type ReadReply = oneshot::Sender<Result<(), ReadError>>;

/// The loop's state.
pub(crate) struct RaftLoop {
    node: RaftNode,
    store: SledStore,
    transport: Transport,
    settings: LoopSettings,
    proposals: mpsc::Receiver<Proposal>,
    reads: mpsc::Receiver<ReadRequest>,
    inbound: mpsc::Receiver<Inbound>,
    status_tx: watch::Sender<NodeStatus>,
    /// Proposals and reads collected this round.
    pending_proposals: Vec<Proposal>,
    pending_reads: Vec<ReadReply>,
    /// Writes waiting for their entry to be applied, by log index.
    waiters: BTreeMap<u64, Waiter>,
    /// ReadIndex rounds not yet confirmed, by ctx.
    read_rounds: HashMap<u64, Vec<ReadReply>>,
    /// Confirmed reads waiting for the state machine to reach `index`.
    released_reads: Vec<(u64, Vec<ReadReply>)>,
    next_read_ctx: u64,
    applied: u64,
    /// Snapshot images staged and stepped this round, waiting for the core
    /// to hand one of them out; the others are discarded after the round.
    staged_snapshots: Vec<StagedImage>,
    /// Work that must wait until after `advance`.
    unreachable: Vec<NodeId>,
    snapshot_index: u64,
    /// Snapshots being streamed, by receiver: the log is kept from their
    /// index on (within limits), so the receiver can continue from the log
    /// once it has installed the image.
    snapshots_in_flight: HashMap<NodeId, SnapshotMeta>,
    last_role: Role,
    last_leader: Option<NodeId>,
    last_term: u64,
}

impl RaftLoop {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node: RaftNode,
        store: SledStore,
        transport: Transport,
        settings: LoopSettings,
        proposals: mpsc::Receiver<Proposal>,
        reads: mpsc::Receiver<ReadRequest>,
        inbound: mpsc::Receiver<Inbound>,
        status_tx: watch::Sender<NodeStatus>,
    ) -> Self {
        let status = node.status();
        RaftLoop {
            applied: status.applied_index,
            snapshot_index: status.snapshot_index,
            last_role: status.role,
            last_leader: status.leader,
            last_term: status.term,
            node,
            store,
            transport,
            settings,
            proposals,
            reads,
            inbound,
            status_tx,
            pending_proposals: Vec::new(),
            pending_reads: Vec::new(),
            waiters: BTreeMap::new(),
            read_rounds: HashMap::new(),
            released_reads: Vec::new(),
            next_read_ctx: 1,
            staged_snapshots: Vec::new(),
            unreachable: Vec::new(),
            snapshots_in_flight: HashMap::new(),
        }
    }

    fn name(&self, id: NodeId) -> String {
        self.settings
            .names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("{id:016x}"))
    }

    /// Runs until `stop` turns true (or its sender goes away), or storage
    /// fails. Waiting clients are answered either way.
    pub(crate) async fn run(
        &mut self,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), StorageError> {
        let mut ticker = tokio::time::interval(self.settings.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.publish(true);
        let result = loop {
            if *stop.borrow() {
                break Ok(());
            }
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break Ok(());
                    }
                }
                _ = ticker.tick() => self.node.tick(),
                Some(ev) = self.inbound.recv() => self.on_inbound(ev),
                Some(p) = self.proposals.recv() => self.pending_proposals.push(p),
                Some(r) = self.reads.recv() => self.pending_reads.push(r.reply),
            }
            self.wait_for_acks().await;
            if let Err(e) = self.round() {
                break Err(e);
            }
        };
        self.shutdown(&result);
        result
    }

    /// A leader with new proposals to write, whose previous batch is
    /// durable here but not yet committed, first waits (at most
    /// [`ACK_WAIT`]) for the followers' acknowledgements of that batch.
    ///
    /// Why: the loop blocks while it fsyncs. Without the wait, the next
    /// batch's fsync starts at once and the acks that arrive during it are
    /// only seen after it, so every write waited for two of the leader's
    /// fsyncs. With it, the previous batch commits and is answered (applied
    /// before the next fsync, see [`Ready::can_apply_before_persist`]) a
    /// round trip after its own fsync; the new proposals only gain company.
    async fn wait_for_acks(&mut self) {
        let waiting = |this: &Self| {
            this.node.role() == Role::Leader
                && this.node.commit_index() < this.node.last_index()
                && (!this.pending_proposals.is_empty() || !this.proposals.is_empty())
        };
        if !waiting(self) {
            return;
        }
        let deadline = tokio::time::sleep(ACK_WAIT);
        tokio::pin!(deadline);
        while waiting(self) {
            tokio::select! {
                biased;
                Some(ev) = self.inbound.recv() => self.on_inbound(ev),
                _ = &mut deadline => return,
            }
        }
    }

    /// One round: collect everything queued, feed the core, drain its Ready.
    fn round(&mut self) -> Result<(), StorageError> {
        for _ in 0..MAX_INBOUND_PER_ROUND {
            match self.inbound.try_recv() {
                Ok(ev) => self.on_inbound(ev),
                Err(_) => break,
            }
        }
        let mut bytes: usize = self.pending_proposals.iter().map(|p| p.cmd.len()).sum();
        while self.pending_proposals.len() < MAX_PROPOSALS_PER_BATCH && bytes < MAX_BATCH_BYTES {
            match self.proposals.try_recv() {
                Ok(p) => {
                    bytes += p.cmd.len();
                    self.pending_proposals.push(p);
                }
                Err(_) => break,
            }
        }
        while self.pending_reads.len() < MAX_READS_PER_ROUND {
            match self.reads.try_recv() {
                Ok(r) => self.pending_reads.push(r.reply),
                Err(_) => break,
            }
        }
        self.propose_pending();
        self.read_pending();
        while self.node.has_ready() {
            let rd = self.node.ready();
            self.handle_ready(rd)?;
            self.node.advance();
            self.after_advance();
        }
        // An image the core did not take (stale term, already covered) is
        // discarded (its tree is cleared in the background).
        self.staged_snapshots.clear();
        self.maybe_compact()?;
        self.observe_role();
        self.publish(true);
        Ok(())
    }

    fn on_inbound(&mut self, ev: Inbound) {
        match ev {
            Inbound::Messages(msgs) => {
                for m in msgs {
                    self.node.step(m);
                }
            }
            Inbound::Snapshot(t) => {
                let t = *t;
                debug!(
                    index = t.staged.meta().index,
                    from = %self.name(t.message.from),
                    "staged snapshot handed to the core"
                );
                self.staged_snapshots.push(t.staged);
                self.node.step(t.message);
            }
            Inbound::Unreachable(peer) => self.node.report_unreachable(peer),
            Inbound::TransferLeadership => match self.node.transfer_leadership(None) {
                Ok(to) => {
                    info!(to = %self.name(to), "handing leadership over before shutting down")
                }
                Err(e) => debug!(error = %e, "no leadership to hand over"),
            },
            Inbound::SnapshotSent { peer, success } => {
                // The transfer task logged the outcome.
                self.snapshots_in_flight.remove(&peer);
                self.node.report_snapshot(peer, success);
            }
        }
    }

    /// All proposals collected this round go into one `propose` call.
    fn propose_pending(&mut self) {
        if self.pending_proposals.is_empty() {
            return;
        }
        // A client that already gave up was told the outcome is unknown;
        // not proposing its write at all is consistent with that.
        let batch: Vec<Proposal> = std::mem::take(&mut self.pending_proposals)
            .into_iter()
            .filter(|p| !p.reply.is_closed())
            .collect();
        if batch.is_empty() {
            return;
        }
        let (cmds, replies): (Vec<Vec<u8>>, Vec<_>) =
            batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
        match self.node.propose(cmds) {
            Ok(out) => {
                for (i, reply) in replies.into_iter().enumerate() {
                    self.waiters.insert(
                        out.first_index + i as u64,
                        Waiter {
                            term: out.term,
                            reply,
                        },
                    );
                }
            }
            Err(e) => {
                let err = match e {
                    RaftError::NotLeader { leader } => WriteError::NotLeader { leader },
                    other => WriteError::Unavailable {
                        reason: other.to_string(),
                    },
                };
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// All reads collected this round share one ReadIndex round.
    fn read_pending(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let replies = std::mem::take(&mut self.pending_reads);
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        match self.node.read_index(ctx) {
            Ok(()) => {
                self.read_rounds.insert(ctx, replies);
            }
            Err(e) => {
                let err = match e {
                    RaftError::NotLeader { leader } => ReadError::NotLeader { leader },
                    other => ReadError::Unavailable {
                        reason: other.to_string(),
                    },
                };
                for r in replies {
                    let _ = r.send(Err(err.clone()));
                }
            }
        }
    }

    fn handle_ready(&mut self, mut rd: Ready) -> Result<(), StorageError> {
        // 0. A leader's appends go out first, so the followers' fsyncs
        //    overlap ours instead of following it: commit latency becomes
        //    one fsync plus a round trip, not two fsyncs.
        if !rd.early_messages.is_empty() {
            self.send_messages(std::mem::take(&mut rd.early_messages))?;
        }
        // 4–5 first when the committed entries are durable here already:
        // the writers waiting on them need not wait for this fsync too.
        let applied_early = rd.can_apply_before_persist();
        if applied_early {
            self.apply_and_release(&rd.committed_entries, std::mem::take(&mut rd.read_states))?;
        }
        // 1. Snapshot.
        if let Some(meta) = rd.snapshot {
            self.install_snapshot(meta)?;
        }
        // 2. Durable before anything is sent.
        if rd.hard_state.is_some() || !rd.entries.is_empty() {
            LogStore::save(&mut self.store, rd.hard_state.as_ref(), &rd.entries)?;
        }
        // 3. Send.
        self.send_messages(rd.messages)?;
        // 4–5. Apply, then answer reads.
        if !applied_early {
            self.apply_and_release(&rd.committed_entries, rd.read_states)?;
        }
        Ok(())
    }

    fn apply_and_release(
        &mut self,
        committed: &[Entry],
        read_states: Vec<ReadState>,
    ) -> Result<(), StorageError> {
        if !committed.is_empty() {
            self.apply(committed)?;
        }
        for rs in read_states {
            self.release_read(rs);
        }
        Ok(())
    }

    fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        let Some(i) = self.staged_snapshots.iter().position(|s| s.meta() == meta) else {
            return Err(StorageError::Inconsistent(format!(
                "the core asked to install snapshot {}/{} but no matching image was staged",
                meta.index, meta.term
            )));
        };
        let staged = self.staged_snapshots.swap_remove(i);
        let (keys, bytes) = (staged.items(), staged.bytes());
        // One durable flip: the staged tree becomes the state machine, the
        // log is emptied and the snapshot meta recorded, atomically.
        self.store.install_staged(staged)?;
        info!(
            index = meta.index,
            term = meta.term,
            keys,
            bytes,
            "installed snapshot from the leader"
        );
        self.applied = meta.index;
        self.snapshot_index = meta.index;
        // Our own entries up to there were either in the snapshot or
        // replaced; we cannot tell which.
        let rest = self.waiters.split_off(&(meta.index + 1));
        for (_, w) in std::mem::replace(&mut self.waiters, rest) {
            let _ = w.reply.send(Err(WriteError::Unknown {
                reason: "a snapshot from the new leader replaced the log".into(),
            }));
        }
        self.answer_released_reads();
        Ok(())
    }

    fn send_messages(&mut self, messages: Vec<Message>) -> Result<(), StorageError> {
        let mut plain = Vec::with_capacity(messages.len());
        for m in messages {
            if let MessageBody::InstallSnapshot { meta } = m.body {
                self.send_snapshot(m, meta)?;
            } else {
                plain.push(m);
            }
        }
        if !plain.is_empty() {
            let dropped = self.transport.send(plain);
            self.unreachable.extend(dropped);
        }
        Ok(())
    }

    /// The core wants `message.to` to install a snapshot at least as new as
    /// `wanted`. The image sent is of the current applied index instead
    /// (committed, ≥ the core's snapshot, and cheap to take: no image is
    /// kept around). The follower's InstallSnapshotResponse reports the
    /// index it really reached, so the core learns the truth.
    fn send_snapshot(
        &mut self,
        message: Message,
        wanted: SnapshotMeta,
    ) -> Result<(), StorageError> {
        let peer = message.to;
        if self.transport.snapshot_in_progress(peer) {
            // Its outcome reaches the core through `report_snapshot`.
            debug!(peer = %self.name(peer), "snapshot transfer already running");
            return Ok(());
        }
        let session = self.store.begin_snapshot()?;
        let meta = session.meta();
        if meta.index < wanted.index {
            warn!(
                wanted = wanted.index,
                applied = meta.index,
                "cannot send a snapshot older than the log's start"
            );
            self.node.report_snapshot(peer, false);
            return Ok(());
        }
        let message = Message {
            body: MessageBody::InstallSnapshot { meta },
            ..message
        };
        if self.transport.send_snapshot(message, session) {
            self.snapshots_in_flight.insert(peer, meta);
        }
        Ok(())
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let results = StateMachine::apply(&mut self.store, entries)?;
        for (entry, result) in entries.iter().zip(results) {
            if let Some(w) = self.waiters.remove(&entry.index) {
                let outcome = if entry.term == w.term {
                    Ok(result)
                } else {
                    Err(WriteError::NotApplied)
                };
                let _ = w.reply.send(outcome);
            }
        }
        if let Some(last) = entries.last() {
            self.applied = self.applied.max(last.index);
        }
        self.answer_released_reads();
        Ok(())
    }

    fn release_read(&mut self, rs: ReadState) {
        if let Some(replies) = self.read_rounds.remove(&rs.ctx) {
            if rs.index <= self.applied {
                for r in replies {
                    let _ = r.send(Ok(()));
                }
            } else {
                self.released_reads.push((rs.index, replies));
            }
        }
    }

    fn answer_released_reads(&mut self) {
        let applied = self.applied;
        self.released_reads.retain_mut(|(index, replies)| {
            if *index <= applied {
                for r in replies.drain(..) {
                    let _ = r.send(Ok(()));
                }
                false
            } else {
                true
            }
        });
    }

    /// Work the core must hear about only once the Ready is advanced.
    fn after_advance(&mut self) {
        for peer in std::mem::take(&mut self.unreachable) {
            self.node.report_unreachable(peer);
        }
    }

    /// Compaction every `snapshot_threshold` applied entries. The key-value
    /// tree is the snapshot, so this is: make the tree durable at the
    /// applied index, drop the log prefix up to it (both inside
    /// `LogStore::compact`), tell the core. No image is built.
    fn maybe_compact(&mut self) -> Result<(), StorageError> {
        let threshold = self.settings.snapshot_threshold;
        if threshold == 0 || self.applied < self.snapshot_index + threshold {
            return Ok(());
        }
        // A leader waits (up to twice the threshold) for followers that are
        // merely a little behind, so that they keep catching up from the
        // log rather than needing the whole snapshot.
        if self.node.role() == Role::Leader && self.applied < self.snapshot_index + 2 * threshold {
            let st = self.node.status();
            let lagging =
                st.peers.iter().filter(|p| p.id != st.id).any(|p| {
                    p.match_index < self.applied && p.match_index + threshold > self.applied
                });
            if lagging {
                return Ok(());
            }
        }
        let applied = self.store.applied();
        // Keep the entries a follower receiving a snapshot will need next,
        // unless that transfer has fallen hopelessly behind.
        let meta = self
            .snapshots_in_flight
            .values()
            .filter(|sent| sent.index < applied.index && applied.index < sent.index + 8 * threshold)
            .min_by_key(|sent| sent.index)
            .copied()
            .unwrap_or(applied);
        if meta.index <= self.snapshot_index {
            return Ok(());
        }
        self.compact_to(meta)
    }

    fn compact_to(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        LogStore::compact(&mut self.store, meta)?;
        if let Err(e) = self.node.compact(meta) {
            warn!(error = %e, "core refused compaction");
            return Ok(());
        }
        self.snapshot_index = meta.index;
        info!(
            index = meta.index,
            term = meta.term,
            ms = started.elapsed().as_millis() as u64,
            "snapshot taken, log compacted"
        );
        Ok(())
    }

    /// Logs leadership changes and fails reads a lost leadership strands.
    fn observe_role(&mut self) {
        let role = self.node.role();
        let leader = self.node.leader();
        let term = self.node.term();
        if role == self.last_role && leader == self.last_leader && term == self.last_term {
            return;
        }
        if role != self.last_role || leader != self.last_leader {
            match role {
                Role::Leader => info!(term, "became leader"),
                Role::Follower => match leader {
                    Some(l) => info!(term, leader = %self.name(l), "following leader"),
                    None => info!(term, "follower, no leader known"),
                },
                Role::PreCandidate => {
                    info!(term, "leader lost; probing for an election (pre-vote)")
                }
                Role::Candidate => info!(term, "starting election"),
            }
        }
        if self.last_role == Role::Leader && (role != Role::Leader || term != self.last_term) {
            // Unconfirmed ReadIndex rounds can no longer complete here.
            for (_, replies) in self.read_rounds.drain() {
                for r in replies {
                    let _ = r.send(Err(ReadError::NotLeader { leader }));
                }
            }
        }
        self.last_role = role;
        self.last_leader = leader;
        self.last_term = term;
    }

    fn publish(&self, running: bool) {
        let st = self.node.status();
        let new = NodeStatus {
            role: st.role,
            term: st.term,
            leader: st.leader,
            commit_index: st.commit_index,
            applied_index: st.applied_index,
            first_index: st.first_index,
            last_index: st.last_index,
            snapshot_index: st.snapshot_index,
            peers: st.peers,
            running,
        };
        self.status_tx.send_if_modified(|cur| {
            if *cur == new {
                false
            } else {
                *cur = new;
                true
            }
        });
    }

    /// Answers everyone still waiting, then reports the node stopped.
    fn shutdown(&mut self, result: &Result<(), StorageError>) {
        let reason = match result {
            Ok(()) => "the node is shutting down".to_string(),
            Err(e) => format!("the node stopped on a storage error: {e}"),
        };
        self.proposals.close();
        self.reads.close();
        while let Ok(p) = self.proposals.try_recv() {
            self.pending_proposals.push(p);
        }
        for p in self.pending_proposals.drain(..) {
            let _ = p.reply.send(Err(WriteError::Unavailable {
                reason: reason.clone(),
            }));
        }
        for (_, w) in std::mem::take(&mut self.waiters) {
            let _ = w.reply.send(Err(WriteError::Unknown {
                reason: reason.clone(),
            }));
        }
        while let Ok(r) = self.reads.try_recv() {
            self.pending_reads.push(r.reply);
        }
        let unavailable = || ReadError::Unavailable {
            reason: reason.clone(),
        };
        for r in self.pending_reads.drain(..) {
            let _ = r.send(Err(unavailable()));
        }
        for (_, replies) in self.read_rounds.drain() {
            for r in replies {
                let _ = r.send(Err(unavailable()));
            }
        }
        for (_, replies) in self.released_reads.drain(..) {
            for r in replies {
                let _ = r.send(Err(unavailable()));
            }
        }
        self.publish(false);
    }

    /// Gives the store back (for a final flush).
    pub(crate) fn into_store(self) -> SledStore {
        self.store
    }
}
