//! The Raft loop: the one piece of code that owns the consensus core and
//! the write side of the store, and the only code that interprets a
//! [`Ready`].
//!
//! It is synchronous and deterministic: it never waits, reads no clock of
//! its own and spawns nothing. A driver feeds it — `on_tick`,
//! `on_inbound`, `on_proposal`, `on_read`, `on_control` — and then calls
//! [`RaftLoop::round`]. Production's driver (`super::driver`) is a tokio
//! `select!` over channels and an interval on a thread of its own; the
//! simulation (`crate::sim`) calls the same methods in virtual time. Both
//! run exactly this code, with the storage ([`NodeStore`]), the transport
//! ([`PeerTransport`]) and the clock ([`Clock`]) as type parameters.
//!
//! Each round takes whatever has arrived and feeds it to the core: every
//! proposal queued at that moment goes into a single
//! [`RaftNode::propose`] call, so a burst of writes shares one log append,
//! one fsync and one AppendEntries per peer (group commit); every read
//! queued shares one ReadIndex round. It then follows the [`Ready`]
//! contract to the letter:
//!
//! 0. a leader hands its AppendEntries to the transport at once, so the
//!    followers write while it writes (the core counts the leader's own
//!    copy only after `advance`, see [`Ready`]),
//! 1. install an incoming snapshot (staged beforehand, off the loop; here
//!    it is one atomic, durable switch),
//! 2. persist hard state and entries (fsync) — nothing below happens first,
//! 3. hand the messages to the transport (never waiting on the network),
//! 4. apply committed entries and answer the writes waiting on them,
//! 5. answer the ReadIndex reads the core released,
//! 6. `advance`.
//!
//! Steps 4–5 come before 1–3 when [`Ready::can_apply_before_persist`]
//! holds (every committed entry is durable here already): the writers
//! waiting on them need not wait for this fsync too.
//!
//! Its policies beyond the Ready contract:
//!
//! * **Ack wait** ([`ACK_WAIT`]): a leader with new proposals whose last
//!   batch is durable but not yet committed holds them back briefly for
//!   that batch's acknowledgements ([`RaftLoop::hold_proposals_until`]).
//! * **Compaction** every `snapshot_threshold` applied entries; a leader
//!   waits for followers that are only a little behind, and keeps the log
//!   from the index of a snapshot it is streaming ([`RaftLoop::round`]).
//! * **Snapshots** never stall it: an image for a follower is a
//!   [`crate::storage::SnapshotSource`] the loop opens in an instant and
//!   the transport streams elsewhere; an incoming image arrives staged.
//! * **Watchers** hear of every applied revision through the loop's
//!   [`ApplyObserver`] (the node's watch hub), on the loop's thread, right
//!   after the apply and before the writer is answered; also of installed
//!   snapshots and of compactions.
//! * **History compaction**: a leader with an auto-compaction policy
//!   ([`super::compaction`]) proposes `Compact` commands on its ticks; after
//!   a compaction is applied (and after start or a snapshot install), the
//!   loop removes the compacted history in bounded steps, one per round
//!   ([`PHYSICAL_COMPACTION_BUDGET`]), so no round stalls on it.
//! * **Failing what can no longer succeed**: reads in an unconfirmed
//!   ReadIndex round when leadership or the term changes; writes whose log
//!   a leader's snapshot replaced; everything on shutdown.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::kv::{Command, CompactionRequest};
use crate::raft::{
    Entry, Message, MessageBody, NodeId, RaftError, RaftNode, ReadState, Ready, Role, SnapshotMeta,
};
use crate::storage::{
    EntryOutcome, LogStore, NodeStore, SnapshotSource, StagedSnapshot, StateMachine, StorageError,
};

use super::compaction::{AutoCompaction, AutoCompactor};
use super::observer::{ApplyObserver, NoObserver};

use super::env::{Clock, LoopInput, PeerTransport};
use super::handle::{
    Applied, Control, Inbound, NodeStatus, Proposal, ReadError, ReadReply, ReadRequest,
    Unavailable, Uncertain, WriteError, WriteReply,
};

/// Most inbound events handled in one round before the core is drained.
pub const MAX_INBOUND_PER_ROUND: usize = 4096;
/// Most proposals batched into one `propose` call.
pub const MAX_PROPOSALS_PER_BATCH: usize = 8192;
/// Soft byte bound of one proposal batch.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// Most reads collected into one ReadIndex round.
pub const MAX_READS_PER_ROUND: usize = 65536;
/// Longest a leader holds new proposals back while the acknowledgements of
/// its last, already durable, batch are on their way (see
/// [`RaftLoop::hold_proposals_until`]). Followers started writing that
/// batch when the leader did, so their acks normally arrive well within
/// this.
pub const ACK_WAIT: Duration = Duration::from_millis(2);
/// Most history changes one round removes physically after a compaction.
pub const PHYSICAL_COMPACTION_BUDGET: usize = 1024;
/// A snapshot being streamed keeps the log from its index on only while
/// the applied index is less than this many thresholds past it.
const IN_FLIGHT_KEEP_THRESHOLDS: u64 = 8;

/// Static settings of the loop.
#[derive(Clone, Debug, Default)]
pub struct LoopSettings {
    /// Applied entries between snapshots (0 = never).
    pub snapshot_threshold: u64,
    /// Display names of the members, for logs.
    pub names: HashMap<NodeId, String>,
    /// The leader's automatic history compaction.
    pub auto_compaction: AutoCompaction,
}

struct Waiter {
    term: u64,
    reply: WriteReply,
}

/// The loop's state. See the [module docs](self).
pub struct RaftLoop<S: NodeStore, T, C: Clock> {
    node: RaftNode,
    store: S,
    transport: T,
    clock: C,
    settings: LoopSettings,
    /// Where the status goes after every round (`None`: nowhere, as in
    /// the simulation, which reads the core directly).
    status_tx: Option<watch::Sender<NodeStatus>>,
    /// Proposals and reads collected this round.
    pending_proposals: Vec<Proposal>,
    pending_bytes: usize,
    pending_reads: Vec<ReadReply>,
    /// Writes waiting for their entry to be applied, by log index.
    waiters: BTreeMap<u64, Waiter>,
    /// ReadIndex rounds not yet confirmed, by ctx.
    read_rounds: BTreeMap<u64, Vec<ReadReply>>,
    /// Confirmed reads waiting for the state machine to reach `index`.
    released_reads: Vec<(u64, Vec<ReadReply>)>,
    next_read_ctx: u64,
    applied: u64,
    /// Snapshot images staged and stepped this round, waiting for the core
    /// to hand one of them out; the others are discarded after the round.
    staged_snapshots: Vec<S::Staged>,
    /// Peers whose messages the transport dropped: reported after `advance`.
    unreachable: Vec<NodeId>,
    snapshot_index: u64,
    /// Snapshots being streamed, by receiver: the log is kept from their
    /// index on (within limits), so the receiver can continue from the log
    /// once it has installed the image.
    snapshots_in_flight: BTreeMap<NodeId, SnapshotMeta>,
    last_role: Role,
    last_leader: Option<NodeId>,
    last_term: u64,
    /// Told of every applied revision (the watch hub).
    observer: Arc<dyn ApplyObserver>,
    /// The leader's automatic compaction policy.
    compactor: AutoCompactor,
    /// When the loop started, for the compaction policy's clock.
    started: C::Instant,
    /// Compacted history may remain to be removed physically.
    physical_compaction_pending: bool,
    /// A tick came since the last round (the compaction policy runs then).
    ticked: bool,
}

impl<S, T, C> RaftLoop<S, T, C>
where
    S: NodeStore,
    T: PeerTransport<S::Source>,
    C: Clock,
{
    /// A loop around `node` (built from `store`'s recovered state),
    /// publishing its status to `status_tx`.
    pub fn new(
        node: RaftNode,
        store: S,
        transport: T,
        clock: C,
        settings: LoopSettings,
        status_tx: Option<watch::Sender<NodeStatus>>,
    ) -> Self {
        let status = node.status();
        let started = clock.now();
        let compactor = AutoCompactor::new(settings.auto_compaction);
        let this = RaftLoop {
            observer: Arc::new(NoObserver),
            compactor,
            started,
            // A crash may have interrupted an earlier physical compaction.
            physical_compaction_pending: true,
            ticked: false,
            applied: status.applied_index,
            snapshot_index: status.snapshot_index,
            last_role: status.role,
            last_leader: status.leader,
            last_term: status.term,
            node,
            store,
            transport,
            clock,
            settings,
            status_tx,
            pending_proposals: Vec::new(),
            pending_bytes: 0,
            pending_reads: Vec::new(),
            waiters: BTreeMap::new(),
            read_rounds: BTreeMap::new(),
            released_reads: Vec::new(),
            next_read_ctx: 1,
            staged_snapshots: Vec::new(),
            unreachable: Vec::new(),
            snapshots_in_flight: BTreeMap::new(),
        };
        this.publish(true);
        this
    }

    fn name(&self, id: NodeId) -> String {
        self.settings
            .names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("{id:016x}"))
    }

    /// Tells `observer` about every applied revision from now on (see
    /// [`ApplyObserver`]); the loop starts with one that ignores them.
    pub fn set_observer(&mut self, observer: Arc<dyn ApplyObserver>) {
        self.observer = observer;
    }

    // ----- inputs -----

    /// One tick of logical time.
    pub fn on_tick(&mut self) {
        self.node.tick();
        self.ticked = true;
    }

    /// The leader's compaction policy: proposes a `Compact` command when
    /// it says so. Nobody waits for the answer; a failed proposal (lost
    /// leadership) is simply not retried by this leader.
    fn auto_compact(&mut self) -> Result<(), StorageError> {
        if self.settings.auto_compaction == AutoCompaction::Off {
            return Ok(());
        }
        let leader = self.node.role() == Role::Leader;
        let (revision, compact) = if leader {
            (self.store.revision()?, self.store.compact_revision()?)
        } else {
            (0, 0)
        };
        let now = self.clock.since(self.started);
        if let Some(revision) = self.compactor.poll(now, leader, revision, compact) {
            let cmd = Command::Compact(CompactionRequest {
                revision,
                physical: false,
            });
            match self.node.propose(vec![cmd.encode()]) {
                Ok(_) => info!(revision, "auto-compaction proposed"),
                Err(e) => debug!(error = %e, "auto-compaction not proposed"),
            }
        }
        Ok(())
    }

    /// A message, a staged snapshot or a transport report.
    pub fn on_inbound(&mut self, ev: Inbound<S::Staged>) {
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
            Inbound::SnapshotSent { peer, success } => {
                // The transport logged the outcome.
                self.snapshots_in_flight.remove(&peer);
                self.node.report_snapshot(peer, success);
            }
        }
    }

    /// A client write, proposed with the round's batch.
    pub fn on_proposal(&mut self, p: Proposal) {
        self.pending_bytes += p.cmd.len();
        self.pending_proposals.push(p);
    }

    /// A linearizable read, joining the round's ReadIndex round.
    pub fn on_read(&mut self, r: ReadRequest) {
        self.pending_reads.push(r.reply);
    }

    /// A request from the node's owner.
    pub fn on_control(&mut self, c: Control) {
        match c {
            Control::TransferLeadership => match self.node.transfer_leadership(None) {
                Ok(to) => {
                    info!(to = %self.name(to), "handing leadership over before shutting down")
                }
                Err(e) => debug!(error = %e, "no leadership to hand over"),
            },
            Control::TransferTo(target) => match self.node.transfer_leadership(Some(target)) {
                Ok(to) => info!(to = %self.name(to), "handing leadership over on request"),
                Err(e) => info!(error = %e, "leadership transfer refused"),
            },
        }
    }

    /// True while this round's proposal batch has room.
    pub fn wants_proposals(&self) -> bool {
        self.pending_proposals.len() < MAX_PROPOSALS_PER_BATCH
            && self.pending_bytes < MAX_BATCH_BYTES
    }

    /// True while this round's ReadIndex round has room.
    pub fn wants_reads(&self) -> bool {
        self.pending_reads.len() < MAX_READS_PER_ROUND
    }

    /// Takes everything `input` has queued, within the round's bounds.
    pub fn collect(&mut self, input: &mut impl LoopInput<S::Staged>) {
        for _ in 0..MAX_INBOUND_PER_ROUND {
            match input.next_inbound() {
                Some(ev) => self.on_inbound(ev),
                None => break,
            }
        }
        while self.wants_proposals() {
            match input.next_proposal() {
                Some(p) => self.on_proposal(p),
                None => break,
            }
        }
        while self.wants_reads() {
            match input.next_read() {
                Some(r) => self.on_read(r),
                None => break,
            }
        }
    }

    /// True while a leader should hold new proposals back: it has some
    /// (`more_queued`: the driver has more waiting), and its previous batch
    /// is written here but not yet committed.
    ///
    /// Why: the loop blocks while it fsyncs. Without the wait, the next
    /// batch's fsync starts at once and the acks that arrive during it are
    /// only seen after it, so every write waited for two of the leader's
    /// fsyncs. With it, the previous batch commits and is answered (applied
    /// before the next fsync, see [`Ready::can_apply_before_persist`]) a
    /// round trip after its own fsync; the new proposals only gain company.
    pub fn waiting_for_acks(&self, more_queued: bool) -> bool {
        self.node.role() == Role::Leader
            && self.node.commit_index() < self.node.last_index()
            && (!self.pending_proposals.is_empty() || more_queued)
    }

    /// When [`RaftLoop::waiting_for_acks`], the deadline ([`ACK_WAIT`] from
    /// now) until which the driver should only feed it inbound messages
    /// (ending the wait early once it no longer waits), before the round.
    pub fn hold_proposals_until(&self, more_queued: bool) -> Option<C::Instant> {
        self.waiting_for_acks(more_queued)
            .then(|| self.clock.after(self.clock.now(), ACK_WAIT))
    }

    /// True when a round would do nothing: the core has no Ready and no
    /// proposal or read waits to be handed to it. (A driver may skip its
    /// own bookkeeping after such a round.)
    pub fn is_idle(&self) -> bool {
        self.pending_proposals.is_empty() && self.pending_reads.is_empty() && !self.node.has_ready()
    }

    // ----- the round -----

    /// One round: propose the batch, start the reads' ReadIndex round, and
    /// handle every Ready the core has. A storage error stops the loop (the
    /// driver then calls [`RaftLoop::shutdown`]).
    pub fn round(&mut self) -> Result<(), StorageError> {
        self.propose_pending();
        self.read_pending();
        while self.node.has_ready() {
            let rd = self.node.ready();
            self.handle_ready(rd)?;
            self.node.advance();
            self.after_advance();
        }
        // An image the core did not take (stale term, already covered) is
        // discarded.
        self.staged_snapshots.clear();
        self.maybe_compact()?;
        if std::mem::take(&mut self.ticked) {
            self.auto_compact()?;
        }
        if self.physical_compaction_pending {
            let done = self.store.compact_step(PHYSICAL_COMPACTION_BUDGET)?;
            self.physical_compaction_pending = !done;
        }
        self.observe_role();
        self.publish(true);
        Ok(())
    }

    /// All proposals collected this round go into one `propose` call.
    fn propose_pending(&mut self) {
        if self.pending_proposals.is_empty() {
            return;
        }
        self.pending_bytes = 0;
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
                    other => WriteError::Unavailable(Unavailable::Refused(other)),
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
                    other => ReadError::Unavailable(Unavailable::Refused(other)),
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
        // 4–5 first when the committed entries are durable here already.
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
        // One durable switch: the staged image becomes the state machine,
        // the log is emptied and the snapshot meta recorded, atomically.
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
        self.observer
            .restored(self.store.revision()?, self.store.compact_revision()?);
        self.physical_compaction_pending = true;
        // Our own entries up to there were either in the snapshot or
        // replaced; we cannot tell which.
        let rest = self.waiters.split_off(&(meta.index + 1));
        for (_, w) in std::mem::replace(&mut self.waiters, rest) {
            let _ = w
                .reply
                .send(Err(WriteError::Unknown(Uncertain::SnapshotReplacedLog)));
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
            self.transport.send(plain, &mut self.unreachable);
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
        let source = self.store.begin_snapshot()?;
        let meta = source.meta();
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
        if self.transport.send_snapshot(message, source) {
            self.snapshots_in_flight.insert(peer, meta);
        }
        Ok(())
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let outcomes = StateMachine::apply(&mut self.store, entries)?;
        for (entry, outcome) in entries.iter().zip(outcomes) {
            let answer = match outcome {
                EntryOutcome::Noop => None,
                EntryOutcome::Command(applied) => {
                    if let Some(revision) = applied.new_revision() {
                        self.observer.applied(revision, &applied.events);
                    } else if let Ok(answer) = &applied.answer {
                        self.observer.caught_up(answer.revision);
                    }
                    if let Some(compact) = applied.compact_revision {
                        self.observer.compacted(compact);
                        self.physical_compaction_pending = true;
                    }
                    Some(applied.answer)
                }
            };
            if let Some(w) = self.waiters.remove(&entry.index) {
                // Same index and term: the waiter's own command, which
                // always has an answer.
                let outcome = match answer {
                    Some(answer) if entry.term == w.term => Ok(Applied {
                        index: entry.index,
                        answer,
                    }),
                    _ => Err(WriteError::NotApplied),
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

    /// Compaction every `snapshot_threshold` applied entries. The state
    /// machine is the snapshot, so this is: make it durable at the applied
    /// index and drop the log prefix up to it (both inside
    /// `LogStore::compact`), then tell the core. No image is built.
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
        let keep = IN_FLIGHT_KEEP_THRESHOLDS * threshold;
        let meta = self
            .snapshots_in_flight
            .values()
            .filter(|sent| sent.index < applied.index && applied.index < sent.index + keep)
            .min_by_key(|sent| sent.index)
            .copied()
            .unwrap_or(applied);
        if meta.index <= self.snapshot_index {
            return Ok(());
        }
        self.compact_to(meta)
    }

    fn compact_to(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        let started = self.clock.now();
        LogStore::compact(&mut self.store, meta)?;
        if let Err(e) = self.node.compact(meta) {
            warn!(error = %e, "core refused compaction");
            return Ok(());
        }
        self.snapshot_index = meta.index;
        info!(
            index = meta.index,
            term = meta.term,
            ms = self.clock.since(started).as_millis() as u64,
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
            for (_, replies) in std::mem::take(&mut self.read_rounds) {
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
        let Some(status_tx) = &self.status_tx else {
            return;
        };
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
        status_tx.send_if_modified(|cur| {
            if *cur == new {
                false
            } else {
                *cur = new;
                true
            }
        });
    }

    /// Answers everyone still waiting (the driver first hands over what its
    /// queues still hold), then reports the node stopped.
    pub fn shutdown(&mut self, result: &Result<(), StorageError>) {
        let failed = result.as_ref().err().map(|e| Arc::new(e.clone()));
        let unavailable = || match &failed {
            None => Unavailable::ShuttingDown,
            Some(e) => Unavailable::StorageFailed(e.clone()),
        };
        let uncertain = || match &failed {
            None => Uncertain::ShuttingDown,
            Some(e) => Uncertain::StorageFailed(e.clone()),
        };
        self.pending_bytes = 0;
        for p in self.pending_proposals.drain(..) {
            let _ = p.reply.send(Err(WriteError::Unavailable(unavailable())));
        }
        for (_, w) in std::mem::take(&mut self.waiters) {
            let _ = w.reply.send(Err(WriteError::Unknown(uncertain())));
        }
        let read_err = || ReadError::Unavailable(unavailable());
        for r in self.pending_reads.drain(..) {
            let _ = r.send(Err(read_err()));
        }
        for (_, replies) in std::mem::take(&mut self.read_rounds) {
            for r in replies {
                let _ = r.send(Err(read_err()));
            }
        }
        for (_, replies) in self.released_reads.drain(..) {
            for r in replies {
                let _ = r.send(Err(read_err()));
            }
        }
        self.publish(false);
    }

    // ----- access for drivers and the simulation -----

    /// The consensus core (read-only).
    pub fn node(&self) -> &RaftNode {
        &self.node
    }

    /// The store (read-only).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, for effects outside the loop (the simulation stages
    /// incoming images and decides when applies become durable).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, for the driver (the simulation drains what was sent).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Gives the store and the transport back (for a final flush, or a
    /// simulated crash).
    pub fn into_parts(self) -> (S, T) {
        (self.store, self.transport)
    }
}
