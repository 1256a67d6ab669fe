//! What a simulated node's Raft loop runs on: the in-memory store wrapped
//! with crash points and the checker's hooks ([`SimStore`]), a transport
//! that hands every message to the simulated network ([`SimTransport`]),
//! and virtual time ([`SimClock`]).
//!
//! The three share one [`NodeEnv`] per node incarnation: its clock is the
//! node's own time during a round. A round starts at the simulation's
//! current time; a `save` (the fsync) advances it by a random persist
//! delay, so whatever the loop sends after it leaves later, and the node is
//! busy until the round's end (events meanwhile wait in its inbox, as they
//! wait in the channels of a real node that is fsyncing).
//!
//! A crash can be *armed*: the next storage call of the loop then fails
//! (before or after doing its work, chosen at random) and the round is
//! aborted there, so whatever the loop had not done yet — the fsync, the
//! messages after it, the applies — never happens. The simulation then
//! rebuilds the node from the durable state only.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::Rng;

use super::checker::Checker;
use super::trace::Trace;
use super::Stats;
use crate::kv::{Event, ExecError, KeyRange, RangeRequest, RangeResponse, Revisioned};
use crate::node::{Clock, PeerTransport};
use crate::raft::{Entry, HardState, Message, NodeId, SnapshotMeta};
use crate::storage::mem::{MemSnapshot, MemStaged, MemStaging, MemStore};
use crate::storage::{
    EntryOutcome, LogStore, NodeStore, RecoveredLog, SnapshotStore, StateMachine, StorageError,
};

/// What every node of a run shares with the simulation: the checker, the
/// trace and the counters.
#[derive(Debug)]
pub(super) struct Shared {
    pub checker: RefCell<Checker>,
    pub trace: RefCell<Trace>,
    pub stats: RefCell<Stats>,
}

impl Shared {
    pub fn record(&self, time: u64, f: impl FnOnce() -> String) {
        self.trace.borrow_mut().record(time, f);
    }
}

/// One node incarnation's environment.
#[derive(Debug)]
pub(super) struct NodeEnv {
    pub id: NodeId,
    /// The node's time: the simulation's at the start of a round, moved on
    /// by the effects that take time.
    pub time: Cell<u64>,
    pub rng: RefCell<SmallRng>,
    /// Largest persist delay.
    pub persist_delay: u64,
    /// Probability that a durable write also makes the applied state
    /// durable (sled's sync covers earlier applies; the model is weaker).
    pub flush_probability: f64,
    /// Probability that the transport drops a message as if its queue were
    /// full (the loop reports the peer unreachable).
    pub queue_full: Cell<f64>,
    /// Probability that an fsync crashes the node.
    pub fsync_crash: Cell<f64>,
    /// The next storage call crashes the node.
    pub crash_armed: Cell<bool>,
    /// The node crashed during this round: every later call fails.
    pub crashed: Cell<bool>,
    /// A broken invariant found inside a storage call.
    pub violation: RefCell<Option<String>>,
    pub shared: Rc<Shared>,
}

impl NodeEnv {
    fn record(&self, f: impl FnOnce() -> String) {
        self.shared.record(self.time.get(), f);
    }

    fn halted() -> StorageError {
        StorageError::Inconsistent("simulated crash: the node is down".into())
    }

    /// A storage call starts: `Err` if the node is down already; `Ok(Some(
    /// after))` if the armed crash happens in this call (`after`: once its
    /// work is done). An armed crash strikes an fsync (`sync`) for sure and
    /// another call only sometimes: a real crash hits where the time goes.
    fn crash_point(&self, sync: bool) -> Result<Option<bool>, StorageError> {
        if self.crashed.get() {
            return Err(Self::halted());
        }
        let p = self.fsync_crash.get();
        if sync && p > 0.0 && self.rng.borrow_mut().gen_bool(p) {
            self.crash_armed.set(true);
        }
        if !self.crash_armed.get() || (!sync && !self.rng.borrow_mut().gen_bool(0.25)) {
            return Ok(None);
        }
        self.crash_armed.set(false);
        self.crashed.set(true);
        let after = self.rng.borrow_mut().gen_bool(0.5);
        let id = self.id;
        self.record(|| {
            format!(
                "n{id} CRASH during a storage call ({})",
                if after { "after it" } else { "before it" }
            )
        });
        Ok(Some(after))
    }

    fn violation(&self, msg: String) -> StorageError {
        *self.violation.borrow_mut() = Some(msg.clone());
        StorageError::Inconsistent(format!("invariant broken: {msg}"))
    }
}

/// The loop's store: a [`MemStore`] with crash points, time, and the
/// checker told about every durable write and every apply.
#[derive(Debug)]
pub(super) struct SimStore {
    pub inner: MemStore,
    pub env: Rc<NodeEnv>,
}

impl SimStore {
    /// Runs `work` unless the armed crash strikes before it; a crash after
    /// it still fails the call. `sync`: the call is an fsync, during which
    /// the writes issued before it (the applies) may or may not have
    /// reached the disk when the crash strikes: sled keeps a prefix of its
    /// writes.
    fn effect<R>(
        &mut self,
        sync: bool,
        work: impl FnOnce(&mut Self) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        match self.env.crash_point(sync)? {
            None => work(self),
            Some(false) => {
                if sync && self.env.rng.borrow_mut().gen_bool(0.5) {
                    self.inner.flush_state_machine();
                }
                Err(NodeEnv::halted())
            }
            Some(true) => {
                work(self)?;
                Err(NodeEnv::halted())
            }
        }
    }
}

impl LogStore for SimStore {
    fn load(&self) -> Result<RecoveredLog, StorageError> {
        self.inner.load()
    }

    fn save(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        let env = self.env.clone();
        // The fsync takes time, crash or not.
        let delay = if env.persist_delay == 0 {
            0
        } else {
            env.rng.borrow_mut().gen_range(0..=env.persist_delay)
        };
        env.time.set(env.time.get() + delay);
        self.effect(true, |s| {
            let id = env.id;
            let prev_term = entries
                .first()
                .and_then(|e| s.inner.log().term_at(e.index - 1));
            if let Some(first) = entries.first() {
                if first.index > s.inner.log().last_index() + 1 {
                    return Err(env.violation(format!(
                        "n{id}: Ready entries start at {} but the durable log ends at {}",
                        first.index,
                        s.inner.log().last_index()
                    )));
                }
            }
            let checked = env
                .shared
                .checker
                .borrow_mut()
                .on_persist(id, prev_term, entries);
            checked.map_err(|m| env.violation(m))?;
            s.inner.save(hard_state, entries)?;
            if !entries.is_empty() {
                let (a, b) = (entries[0].index, entries[entries.len() - 1].index);
                env.record(|| format!("n{id} persist {a}..={b} hs={hard_state:?}"));
            } else {
                env.record(|| format!("n{id} persist hs={hard_state:?}"));
            }
            if env.rng.borrow_mut().gen_bool(env.flush_probability) {
                s.inner.flush_state_machine();
            }
            Ok(())
        })
    }

    fn compact(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        self.effect(true, |s| {
            let applied = s.inner.applied_index();
            s.inner.compact(meta)?;
            let mut stats = s.env.shared.stats.borrow_mut();
            stats.compactions += 1;
            if meta.index < applied {
                stats.compactions_kept_for_transfer += 1;
            }
            drop(stats);
            let id = s.env.id;
            s.env.record(|| format!("n{id} compact to {meta:?}"));
            Ok(())
        })
    }

    fn reset_to_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        self.effect(true, |s| s.inner.reset_to_snapshot(meta))
    }
}

impl StateMachine for SimStore {
    fn applied_index(&self) -> u64 {
        self.inner.applied_index()
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<EntryOutcome>, StorageError> {
        self.effect(false, |s| {
            let skipped_upto = s.inner.applied_index();
            let results = s.inner.apply(entries)?;
            let env = &s.env;
            let id = env.id;
            let checked =
                env.shared
                    .checker
                    .borrow_mut()
                    .on_apply(id, entries, &results, skipped_upto);
            checked.map_err(|m| env.violation(m))?;
            if let (Some(a), Some(b)) = (entries.first(), entries.last()) {
                let (a, b) = (a.index, b.index);
                env.record(|| format!("n{id} apply {a}..={b}"));
            }
            Ok(results)
        })
    }

    fn range(
        &self,
        req: &RangeRequest,
    ) -> Result<Revisioned<RangeResponse>, ExecError<StorageError>> {
        self.inner.range(req)
    }

    fn events(
        &self,
        from_revision: i64,
        range: KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Event>, ExecError<StorageError>> {
        self.inner.events(from_revision, range, limit)
    }

    fn revision(&self) -> Result<i64, StorageError> {
        self.inner.revision()
    }

    fn compact_revision(&self) -> Result<i64, StorageError> {
        self.inner.compact_revision()
    }

    fn compact_step(&mut self, budget: usize) -> Result<bool, StorageError> {
        // Physical compaction writes nothing the checker tracks, and a
        // crash in it loses nothing: no crash point here.
        self.inner.compact_step(budget)
    }

    fn hash_kv(&self, revision: i64) -> Result<u32, ExecError<StorageError>> {
        self.inner.hash_kv(revision)
    }

    fn snapshot(&self) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
        self.inner.snapshot()
    }

    fn restore(&mut self, meta: SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        self.effect(true, |s| s.inner.restore(meta, data))
    }
}

impl SnapshotStore for SimStore {
    type Source = MemSnapshot;
    type Staged = MemStaged;
    type Writer = MemStaging;

    fn applied(&self) -> SnapshotMeta {
        self.inner.applied()
    }

    fn begin_snapshot(&self) -> Result<MemSnapshot, StorageError> {
        // No work to undo: a crash here strikes before it.
        match self.env.crash_point(false)? {
            None => self.inner.begin_snapshot(),
            Some(_) => Err(NodeEnv::halted()),
        }
    }

    fn stage_snapshot(&self) -> Result<MemStaging, StorageError> {
        self.inner.stage_snapshot()
    }

    fn install_staged(&mut self, staged: MemStaged) -> Result<(), StorageError> {
        self.effect(true, |s| {
            let meta = crate::storage::StagedSnapshot::meta(&staged);
            s.inner.install_staged(staged)?;
            s.env.shared.stats.borrow_mut().snapshots_installed += 1;
            let id = s.env.id;
            s.env.record(|| format!("n{id} INSTALL snapshot {meta:?}"));
            Ok(())
        })
    }
}

impl NodeStore for SimStore {
    fn flush(&self) -> Result<(), StorageError> {
        self.inner.flush()
    }
}

/// The loop's transport: everything sent is stamped with the node's time
/// and collected for the simulated network.
#[derive(Debug)]
pub(super) struct SimTransport {
    pub env: Rc<NodeEnv>,
    /// Messages sent this round, with their send time.
    pub outbox: Vec<(u64, Message)>,
    /// Snapshot transfers started this round.
    pub snapshots: Vec<(u64, Message, MemSnapshot)>,
    /// Peers a transfer to is running (until its report is delivered).
    pub busy: BTreeSet<NodeId>,
}

impl PeerTransport<MemSnapshot> for SimTransport {
    fn send(&mut self, messages: Vec<Message>, dropped: &mut Vec<NodeId>) {
        let now = self.env.time.get();
        let full = self.env.queue_full.get();
        for m in messages {
            if full > 0.0 && self.env.rng.borrow_mut().gen_bool(full) {
                if !dropped.contains(&m.to) {
                    dropped.push(m.to);
                }
                continue;
            }
            self.outbox.push((now, m));
        }
    }

    fn snapshot_in_progress(&self, peer: NodeId) -> bool {
        self.busy.contains(&peer)
    }

    fn send_snapshot(&mut self, message: Message, source: MemSnapshot) -> bool {
        if !self.busy.insert(message.to) {
            return false;
        }
        self.env.shared.stats.borrow_mut().snapshots_sent += 1;
        self.snapshots.push((self.env.time.get(), message, source));
        true
    }
}

/// Virtual time: one unit is one millisecond of the loop's durations.
#[derive(Debug)]
pub(super) struct SimClock {
    pub env: Rc<NodeEnv>,
}

impl Clock for SimClock {
    type Instant = u64;

    fn now(&self) -> u64 {
        self.env.time.get()
    }

    fn after(&self, at: u64, d: Duration) -> u64 {
        at + (d.as_millis() as u64).max(1)
    }

    fn since(&self, earlier: u64) -> Duration {
        Duration::from_millis(self.env.time.get().saturating_sub(earlier))
    }
}

/// Makes an image of `source` travel as the real transport sends it (in
/// chunks) and stages it with `store`: the receiver's side of a transfer.
pub(super) fn stage_image(
    store: &impl SnapshotStore<Writer = MemStaging, Staged = MemStaged>,
    source: MemSnapshot,
    chunk_bytes: usize,
) -> Result<MemStaged, StorageError> {
    use crate::storage::{SnapshotSource, SnapshotWriter};
    let mut writer = store.stage_snapshot()?;
    for chunk in source.chunks(chunk_bytes) {
        let chunk = chunk?;
        writer.write(&chunk.data)?;
        if let Some(trailer) = chunk.trailer {
            return writer.finish(&trailer);
        }
    }
    Err(StorageError::Inconsistent(
        "snapshot image ended without its trailer".into(),
    ))
}
