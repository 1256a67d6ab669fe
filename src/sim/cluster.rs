//! The simulated cluster: nodes, network, faults, and the event loop.
//!
//! Each node runs the same Ready protocol a real runtime does
//! ([`crate::raft::Ready`]): take a Ready, send its early messages (a
//! leader's appends), persist it (after a random delay, during which the
//! node keeps stepping messages), send the rest, apply, answer reads,
//! `advance`. A crash in the middle drops the rest of the Ready.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::checker::Checker;
use super::client::Client;
use super::trace::Trace;
use super::{Scenario, Stats, TICK};
use crate::raft::{
    Config, Entry, InitialState, Message, NodeId, RaftNode, ReadState, Ready, Role, SnapshotMeta,
};
use crate::storage::mem::{MemLogStore, MemStateMachine};
use crate::storage::{LogStore, StateMachine};

/// Something that happens at a point in simulated time.
#[derive(Debug)]
pub(super) enum Event {
    /// A node's clock ticks (recurring).
    Tick(usize),
    /// A message arrives, with the snapshot image for InstallSnapshot.
    Deliver(Message, Option<std::sync::Arc<Vec<u8>>>),
    /// A node finished persisting the Ready it took (if still the same
    /// incarnation).
    ReadyDone(usize, u64),
    /// The runtime of `node` learns how streaming a snapshot to `peer` went.
    SnapshotReport {
        node: usize,
        incarnation: u64,
        peer: NodeId,
        success: bool,
    },
    /// A client acts (starts an operation or gives up on one).
    Client(usize, u64),
    /// The partition layout changes.
    Partition,
    /// A random node crashes.
    Crash,
    /// A crashed node restarts.
    Restart(usize),
    /// The chaos phase ends: faults heal.
    Heal,
    /// Liveness phase: drive the probe write and convergence checks.
    Liveness,
    /// The network replays an old message (chaos phase).
    Replay,
    /// The leader hands its leadership to its most up-to-date peer (chaos
    /// phase), as a node does when it is asked to shut down.
    Transfer,
}

struct Scheduled {
    time: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.seq) == (o.time, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap, we want the earliest first.
        (o.time, o.seq).cmp(&(self.time, self.seq))
    }
}

/// One simulated server.
pub(super) struct SimNode {
    pub(super) id: NodeId,
    /// The core, `None` while crashed.
    pub(super) core: Option<RaftNode>,
    /// Bumped on every crash, so stale timers are recognised.
    pub(super) incarnation: u64,
    /// Durable Raft state.
    pub(super) log: MemLogStore,
    /// Applied state (with its own durability point).
    pub(super) sm: MemStateMachine,
    /// The Ready taken and not yet handled.
    busy: Option<Ready>,
    /// Snapshot images received and not yet installed.
    pub(super) staged: Vec<(SnapshotMeta, std::sync::Arc<Vec<u8>>)>,
    /// Commit index last seen (this incarnation), for the checks.
    last_commit: u64,
}

/// Where the liveness phase stands.
#[derive(Debug, Default)]
struct Liveness {
    /// Time the faults healed.
    healed_at: u64,
    /// The probe write: (node, incarnation, index, term).
    probe: Option<(usize, u64, u64, u64)>,
    /// Time the probe write was applied by its leader.
    committed_at: Option<u64>,
}

/// A whole simulated run.
pub struct Sim {
    pub(super) seed: u64,
    pub(super) sc: Scenario,
    pub(super) rng: SmallRng,
    pub(super) now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    pub(super) nodes: Vec<SimNode>,
    /// `blocked[from * n + to]`: the directed link drops everything.
    pub(super) blocked: Vec<bool>,
    pub(super) loss: f64,
    pub(super) duplicate: f64,
    pub(super) long_delay: f64,
    /// Recent election messages (and a sample of the others), for replays.
    pub(super) history: Vec<Message>,
    /// Faults still being injected.
    pub(super) chaos: bool,
    pub(super) checker: Checker,
    pub(super) clients: Vec<Client>,
    /// Highest log index of a write acknowledged to a client.
    pub(super) completed_max: u64,
    pub(super) trace: Trace,
    pub(super) stats: Stats,
    liveness: Option<Liveness>,
    /// Next ReadIndex context.
    pub(super) next_ctx: u64,
    done: bool,
}

impl Sim {
    /// A run of `scenario` driven by `seed`; `trace` records events for a
    /// failure report.
    pub fn new(seed: u64, scenario: Scenario, trace: bool) -> Self {
        let n = scenario.nodes;
        let nodes = (0..n)
            .map(|i| SimNode {
                id: i as NodeId + 1,
                core: None,
                incarnation: 0,
                log: MemLogStore::new(),
                sm: MemStateMachine::new(),
                busy: None,
                staged: Vec::new(),
                last_commit: 0,
            })
            .collect();
        let clients = (0..scenario.clients).map(Client::new).collect();
        Sim {
            seed,
            rng: SmallRng::seed_from_u64(seed),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            blocked: vec![false; n * n],
            loss: scenario.loss,
            duplicate: scenario.duplicate,
            long_delay: scenario.long_delay,
            history: Vec::new(),
            chaos: true,
            checker: Checker::new(),
            clients,
            completed_max: 0,
            trace: Trace::new(trace, super::trace_lines()),
            stats: Stats::default(),
            liveness: None,
            next_ctx: 1,
            done: false,
            sc: scenario,
        }
    }

    /// The recorded trace (empty unless tracing was on).
    pub fn trace_lines(&self) -> Vec<String> {
        self.trace.lines()
    }

    /// Runs to the end: chaos, healing, liveness, convergence. Any broken
    /// invariant (or a panic in the core) is an error.
    pub fn run(&mut self) -> Result<Stats, String> {
        match catch_unwind(AssertUnwindSafe(|| self.run_inner())) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(format!("panic at t={}: {msg}", self.now))
            }
        }
    }

    fn run_inner(&mut self) -> Result<Stats, String> {
        for i in 0..self.nodes.len() {
            self.start_node(i)?;
            let offset = self.rng.gen_range(0..TICK);
            self.schedule(offset, Event::Tick(i));
        }
        for c in 0..self.clients.len() {
            let at = self.rng.gen_range(0..5 * TICK);
            self.schedule(at, Event::Client(c, 0));
        }
        if self.sc.partition_every_ticks > 0 {
            let at = self.rng.gen_range(1..=self.sc.partition_every_ticks) * TICK;
            self.schedule(at, Event::Partition);
        }
        if self.sc.crash_every_ticks > 0 {
            let at = self.rng.gen_range(1..=2 * self.sc.crash_every_ticks) * TICK;
            self.schedule(at, Event::Crash);
        }
        if self.sc.replay > 0.0 {
            self.schedule(TICK, Event::Replay);
        }
        if self.sc.crash_every_ticks > 0 {
            let at = self.rng.gen_range(1..=2 * self.sc.crash_every_ticks) * TICK;
            self.schedule(at, Event::Transfer);
        }
        self.schedule(self.sc.chaos_ticks * TICK, Event::Heal);
        let end =
            (self.sc.chaos_ticks + self.sc.liveness_ticks + self.sc.converge_ticks + 10) * TICK;
        while !self.done {
            let Some(s) = self.queue.pop() else {
                return Err("event queue ran dry".into());
            };
            if s.time > end {
                return Err("run did not finish in time".into());
            }
            self.now = s.time;
            self.stats.events += 1;
            self.handle(s.event)?;
            self.check_nodes()?;
        }
        self.stats.leader_terms = self.checker.leader_terms() as u64;
        self.stats.final_index = self.checker.applied_len();
        Ok(self.stats.clone())
    }

    pub(super) fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            time: self.now + delay,
            seq: self.seq,
            event,
        });
    }

    pub(super) fn record(&mut self, f: impl FnOnce() -> String) {
        self.trace.record(self.now, f);
    }

    fn handle(&mut self, ev: Event) -> Result<(), String> {
        match ev {
            Event::Tick(i) => {
                self.schedule(TICK, Event::Tick(i));
                if let Some(core) = self.nodes[i].core.as_mut() {
                    let before = (core.role(), core.term());
                    core.tick();
                    let after = (core.role(), core.term());
                    if before != after {
                        let id = self.nodes[i].id;
                        self.record(|| format!("n{id} tick: {before:?} -> {after:?}"));
                    }
                    self.pump(i)?;
                }
            }
            Event::Deliver(m, image) => self.deliver(m, image)?,
            Event::ReadyDone(i, inc) => {
                let node = &mut self.nodes[i];
                if node.incarnation == inc {
                    if let Some(rd) = node.busy.take() {
                        self.finish_ready(i, rd)?;
                        self.pump(i)?;
                    }
                }
            }
            Event::SnapshotReport {
                node,
                incarnation,
                peer,
                success,
            } => {
                if self.nodes[node].incarnation == incarnation {
                    if let Some(core) = self.nodes[node].core.as_mut() {
                        core.report_snapshot(peer, success);
                        let id = self.nodes[node].id;
                        self.record(|| format!("n{id} report_snapshot(n{peer}, {success})"));
                        self.pump(node)?;
                    }
                }
            }
            Event::Client(c, op) => self.client_act(c, op)?,
            Event::Partition => self.change_partition(),
            Event::Crash => self.crash_random()?,
            Event::Transfer => self.transfer_leadership()?,
            Event::Restart(i) => {
                if self.nodes[i].core.is_none() {
                    self.start_node(i)?;
                }
            }
            Event::Heal => self.heal()?,
            Event::Liveness => self.liveness_step()?,
            Event::Replay => self.replay()?,
        }
        Ok(())
    }

    // ----- nodes -----

    /// Starts (or restarts) node `i` from its durable state only.
    fn start_node(&mut self, i: usize) -> Result<(), String> {
        let sc = &self.sc;
        let voters: Vec<NodeId> = (1..=sc.nodes as NodeId).collect();
        let node = &mut self.nodes[i];
        let cfg = Config {
            election_ticks: sc.election_ticks,
            heartbeat_ticks: sc.heartbeat_ticks,
            max_inflight: sc.max_inflight,
            max_entries_per_msg: sc.max_entries_per_msg,
            max_bytes_per_msg: sc.max_bytes_per_msg,
            pre_vote: sc.pre_vote,
            check_quorum: sc.check_quorum,
            ..Config::new(node.id, voters)
        };
        let rec = node.log.load().map_err(|e| e.to_string())?;
        if node.sm.applied_index() < rec.snapshot.index {
            // The state machine lost applies past the snapshot: start from
            // the snapshot image, as a real node must.
            let (meta, data) = node
                .log
                .snapshot_image()
                .cloned()
                .ok_or("snapshot without an image")?;
            node.sm.restore(meta, &data).map_err(|e| e.to_string())?;
        }
        let init = InitialState {
            hard_state: rec.hard_state,
            snapshot: rec.snapshot,
            entries: rec.entries,
            applied: node.sm.applied_index(),
        };
        let seed = self.seed ^ (node.id << 40) ^ node.incarnation.wrapping_mul(0x9E37_79B9);
        let core = RaftNode::new(cfg, init, seed)
            .map_err(|e| format!("node {} cannot restart: {e}", node.id))?;
        let id = node.id;
        let (snap, commit) = (core.snapshot_meta().index, core.commit_index());
        self.checker.on_commit(id, &core, snap, commit)?;
        node.last_commit = commit;
        node.core = Some(core);
        let applied = node.sm.applied_index();
        self.record(|| format!("n{id} START applied={applied} commit={commit} snap={snap}"));
        Ok(())
    }

    fn crash(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        if node.core.is_none() {
            return Ok(());
        }
        node.core = None;
        node.busy = None;
        node.staged.clear();
        node.sm.crash();
        node.incarnation += 1;
        self.stats.crashes += 1;
        let id = node.id;
        self.record(|| format!("n{id} CRASH"));
        self.abandon_ops_on(i);
        Ok(())
    }

    fn transfer_leadership(&mut self) -> Result<(), String> {
        if !self.chaos {
            return Ok(());
        }
        if let Some(l) = self.current_leader() {
            let id = self.nodes[l].id;
            if let Some(core) = self.nodes[l].core.as_mut() {
                if let Ok(to) = core.transfer_leadership(None) {
                    self.stats.transfers += 1;
                    self.record(|| format!("n{id} TRANSFER to n{to}"));
                }
            }
            self.pump(l)?;
        }
        let next = self.rng.gen_range(1..=2 * self.sc.crash_every_ticks) * TICK;
        self.schedule(next, Event::Transfer);
        Ok(())
    }

    fn crash_random(&mut self) -> Result<(), String> {
        if !self.chaos {
            return Ok(());
        }
        let i = match self.current_leader() {
            Some(l) if self.rng.gen_bool(0.5) => l,
            _ => self.rng.gen_range(0..self.nodes.len()),
        };
        self.crash(i)?;
        let down = self.rng.gen_range(1..=self.sc.max_down_ticks) * TICK;
        self.schedule(down, Event::Restart(i));
        let next = self.rng.gen_range(1..=2 * self.sc.crash_every_ticks) * TICK;
        self.schedule(next, Event::Crash);
        Ok(())
    }

    /// Takes and handles Readys of node `i` until it has none, or one is
    /// left "being persisted" for a random delay.
    pub(super) fn pump(&mut self, i: usize) -> Result<(), String> {
        loop {
            let node = &mut self.nodes[i];
            let Some(core) = node.core.as_mut() else {
                return Ok(());
            };
            if node.busy.is_some() || !core.has_ready() {
                return Ok(());
            }
            let mut rd = core.ready();
            // A leader's appends leave before its own persist completes,
            // as the real runtime sends them; a crash during the delay
            // below then loses the leader's copy but not the followers'.
            let early = std::mem::take(&mut rd.early_messages);
            for m in early {
                self.send(i, m);
            }
            // Committed entries that are durable here already may be
            // applied before this Ready's persist, as the runtime does.
            if rd.can_apply_before_persist() {
                let committed = std::mem::take(&mut rd.committed_entries);
                let reads = std::mem::take(&mut rd.read_states);
                self.apply_and_answer(i, &committed, reads)?;
            }
            let node = &mut self.nodes[i];
            let delay = if self.sc.persist_delay == 0 {
                0
            } else {
                self.rng.gen_range(0..=self.sc.persist_delay)
            };
            if delay == 0 {
                self.finish_ready(i, rd)?;
            } else {
                let inc = node.incarnation;
                node.busy = Some(rd);
                self.schedule(delay, Event::ReadyDone(i, inc));
                return Ok(());
            }
        }
    }

    /// Handles one Ready in the documented order.
    fn finish_ready(&mut self, i: usize, rd: Ready) -> Result<(), String> {
        let id = self.nodes[i].id;
        // 1. Snapshot.
        if let Some(meta) = rd.snapshot {
            let node = &mut self.nodes[i];
            let pos = node
                .staged
                .iter()
                .rposition(|(m, _)| *m == meta)
                .ok_or_else(|| {
                    format!("n{id}: core installs snapshot {meta:?} that was never staged")
                })?;
            let (_, data) = node.staged.swap_remove(pos);
            node.staged.retain(|(m, _)| m.index > meta.index);
            node.sm.restore(meta, &data).map_err(|e| e.to_string())?;
            node.log
                .reset_to_snapshot(meta)
                .map_err(|e| e.to_string())?;
            node.log.set_snapshot_image(meta, data.to_vec());
            self.stats.snapshots_installed += 1;
            self.record(|| format!("n{id} INSTALL snapshot {meta:?}"));
        }
        // 2. Persist.
        if rd.hard_state.is_some() || !rd.entries.is_empty() {
            let node = &mut self.nodes[i];
            let prev_term = rd
                .entries
                .first()
                .and_then(|e| node.log.term_at(e.index - 1));
            if let Some(first) = rd.entries.first() {
                if first.index > node.log.last_index() + 1 {
                    return Err(format!(
                        "n{id}: Ready entries start at {} but the durable log ends at {}",
                        first.index,
                        node.log.last_index()
                    ));
                }
            }
            self.checker.on_persist(id, prev_term, &rd.entries)?;
            let node = &mut self.nodes[i];
            node.log
                .save(rd.hard_state.as_ref(), &rd.entries)
                .map_err(|e| format!("n{id}: {e}"))?;
            if self.trace.enabled() && !rd.entries.is_empty() {
                let (a, b) = (rd.entries[0].index, rd.entries[rd.entries.len() - 1].index);
                let hs = rd.hard_state;
                self.record(|| format!("n{id} persist {a}..={b} hs={hs:?}"));
            } else if self.trace.enabled() {
                let hs = rd.hard_state;
                self.record(|| format!("n{id} persist hs={hs:?}"));
            }
        }
        // 3. Send.
        for m in rd.messages {
            self.send(i, m);
        }
        // 4–5. Apply, answer reads (unless done before the persist).
        self.apply_and_answer(i, &rd.committed_entries, rd.read_states)?;
        // 6. Advance.
        let node = &mut self.nodes[i];
        let Some(core) = node.core.as_mut() else {
            return Ok(());
        };
        core.advance();
        if self.rng.gen_bool(self.sc.flush_probability) {
            self.nodes[i].sm.flush();
        }
        self.maybe_compact(i)
    }

    /// Steps 4 and 5 of a Ready: apply `committed`, then answer `reads`.
    fn apply_and_answer(
        &mut self,
        i: usize,
        committed: &[Entry],
        reads: Vec<ReadState>,
    ) -> Result<(), String> {
        let id = self.nodes[i].id;
        if !committed.is_empty() {
            let node = &mut self.nodes[i];
            node.sm
                .apply(committed)
                .map_err(|e| format!("n{id}: apply: {e}"))?;
            self.checker.on_apply(id, committed)?;
            if self.trace.enabled() {
                let (a, b) = (committed[0].index, committed[committed.len() - 1].index);
                self.record(|| format!("n{id} apply {a}..={b}"));
            }
            self.on_applied(i, committed)?;
        }
        for rs in reads {
            self.on_read_state(i, rs)?;
        }
        Ok(())
    }

    /// Snapshot + compaction every `snapshot_threshold` applied entries.
    fn maybe_compact(&mut self, i: usize) -> Result<(), String> {
        let th = self.sc.snapshot_threshold;
        let node = &mut self.nodes[i];
        let Some(core) = node.core.as_mut() else {
            return Ok(());
        };
        if th == 0 || node.sm.applied_index() < node.log.snapshot().index + th {
            return Ok(());
        }
        // The image must be durable before the log prefix goes.
        node.sm.flush();
        let (meta, data) = node.sm.snapshot().map_err(|e| e.to_string())?;
        node.log.set_snapshot_image(meta, data);
        node.log.compact(meta).map_err(|e| e.to_string())?;
        core.compact(meta)
            .map_err(|e| format!("n{}: core refused compaction: {e}", node.id))?;
        self.stats.compactions += 1;
        let id = node.id;
        self.record(|| format!("n{id} compact to {meta:?}"));
        Ok(())
    }

    // ----- phases -----

    fn heal(&mut self) -> Result<(), String> {
        self.chaos = false;
        self.blocked.iter_mut().for_each(|b| *b = false);
        self.loss = 0.0;
        self.duplicate = 0.0;
        self.long_delay = 0.0;
        self.record(|| "HEAL: no more faults".into());
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_none() {
                self.start_node(i)?;
            }
        }
        self.liveness = Some(Liveness {
            healed_at: self.now,
            ..Default::default()
        });
        self.schedule(0, Event::Liveness);
        Ok(())
    }

    /// Clients may start new operations.
    pub(super) fn clients_active(&self) -> bool {
        self.liveness
            .as_ref()
            .is_none_or(|l| l.committed_at.is_none())
    }

    /// Each tick after healing: (re)propose the probe write at the leader
    /// until it is applied, then wait for every replica to converge.
    fn liveness_step(&mut self) -> Result<(), String> {
        self.schedule(TICK, Event::Liveness);
        let mut lv = self.liveness.take().expect("liveness phase");
        let result = self.liveness_inner(&mut lv);
        self.liveness = Some(lv);
        result
    }

    fn liveness_inner(&mut self, lv: &mut Liveness) -> Result<(), String> {
        let elapsed = (self.now - lv.healed_at) / TICK;
        match lv.committed_at {
            None => {
                // Did the probe make it? (Committed = applied somewhere with
                // the term it was proposed in.)
                if let Some((i, inc, index, term)) = lv.probe {
                    if self.checker.applied_len() >= index {
                        if self.checker.committed_term(index) == Some(term) {
                            lv.committed_at = Some(self.now);
                            self.stats.heal_to_commit_ticks = elapsed;
                            self.record(|| format!("LIVENESS probe committed at {index}"));
                            return Ok(());
                        }
                        lv.probe = None;
                    } else {
                        let node = &self.nodes[i];
                        let gone = node.incarnation != inc
                            || node
                                .core
                                .as_ref()
                                .is_none_or(|c| c.term() != term || c.role() != Role::Leader);
                        if gone {
                            lv.probe = None;
                        }
                    }
                }
                if elapsed > self.sc.liveness_ticks {
                    return Err(format!(
                        "liveness: no write committed within {} ticks after the faults healed",
                        self.sc.liveness_ticks
                    ));
                }
                if lv.probe.is_none() {
                    if let Some(i) = self.current_leader() {
                        let cmd = crate::kv::KvCommand::Put {
                            key: "probe".into(),
                            value: format!("seed-{}", self.seed),
                            cas: None,
                        };
                        let core = self.nodes[i].core.as_mut().expect("leader is up");
                        if let Ok(out) = core.propose(vec![cmd.encode()]) {
                            lv.probe =
                                Some((i, self.nodes[i].incarnation, out.first_index, out.term));
                            let id = self.nodes[i].id;
                            self.record(|| {
                                format!(
                                    "LIVENESS probe proposed at n{id} index {}",
                                    out.first_index
                                )
                            });
                            self.pump(i)?;
                        }
                    }
                }
            }
            Some(at) => {
                let target = self.checker.applied_len();
                let converged = self
                    .nodes
                    .iter()
                    .all(|n| n.core.is_some() && n.sm.applied_index() == target)
                    && self.clients.iter().all(|c| c.is_idle());
                if converged {
                    let reference: Vec<(String, String, u64)> = self
                        .checker
                        .reference()
                        .items()
                        .map(|(k, v, i)| (k.to_string(), v.to_string(), i))
                        .collect();
                    for n in &self.nodes {
                        let mine: Vec<(String, String, u64)> =
                            n.sm.items()
                                .map(|(k, v, i)| (k.to_string(), v.to_string(), i))
                                .collect();
                        if mine != reference {
                            return Err(format!(
                                "replica n{} converged to a different state than the reference",
                                n.id
                            ));
                        }
                    }
                    self.record(|| format!("CONVERGED at index {target}"));
                    self.done = true;
                } else if (self.now - at) / TICK > self.sc.converge_ticks {
                    let applied: Vec<u64> =
                        self.nodes.iter().map(|n| n.sm.applied_index()).collect();
                    return Err(format!(
                        "liveness: replicas did not converge within {} ticks (applied {applied:?}, \
                         canonical {target})",
                        self.sc.converge_ticks
                    ));
                }
            }
        }
        Ok(())
    }

    /// The live leader with the highest term, if any.
    pub(super) fn current_leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.core.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| c.role() == Role::Leader)
            .max_by_key(|(_, c)| c.term())
            .map(|(i, _)| i)
    }

    // ----- checks -----

    /// The per-event checks on every live node.
    fn check_nodes(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let Some(core) = node.core.as_ref() else {
                continue;
            };
            if core.role() == Role::Leader {
                self.checker.observe_leader(node.id, core.term(), core)?;
            }
            let commit = core.commit_index();
            if commit < node.last_commit {
                return Err(format!(
                    "n{}: commit index went backwards from {} to {commit}",
                    node.id, node.last_commit
                ));
            }
            if commit > node.last_commit {
                let from = node.last_commit;
                self.checker.on_commit(node.id, core, from, commit)?;
                self.nodes[i].last_commit = commit;
            }
        }
        Ok(())
    }
}
