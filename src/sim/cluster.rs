//! The simulated cluster: nodes, their drivers, faults, and the event loop.
//!
//! Every node runs the production Raft loop ([`RaftLoop`]) over the
//! simulated environment of [`super::env`]. The simulation is its driver,
//! shaped like the production one (`crate::node`'s `driver`): events for a
//! node wait in its inbox; when the node is free it takes one (a tick
//! first, then control, peer traffic, proposals, reads), holds proposals
//! for the ack wait if the loop asks, collects whatever else is queued and
//! runs a round. A round that fsyncs takes virtual time; the node is busy
//! until it ends.

use std::collections::{BinaryHeap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;

use super::checker::Checker;
use super::client::Client;
use super::env::{stage_image, NodeEnv, Shared, SimClock, SimStore, SimTransport};
use super::trace::Trace;
use super::{Scenario, Stats, TICK};
use crate::node::{
    Applied, Control, Inbound, IncomingSnapshot, LoopInput, LoopSettings, Proposal, RaftLoop,
    ReadRequest, WriteError,
};
use crate::raft::{Config, InitialState, Message, NodeId, RaftNode, Role};
use crate::storage::mem::{MemSnapshot, MemStaged, MemStore};
use crate::storage::{LogStore, NodeStore, StateMachine};

/// The Raft loop as the simulation runs it.
pub(super) type SimLoop = RaftLoop<SimStore, SimTransport, SimClock>;

/// Bytes per chunk of a simulated snapshot transfer (small, so images
/// travel in several chunks).
const SNAPSHOT_CHUNK_BYTES: usize = 64;

/// Something that happens at a point in simulated time.
#[derive(Debug)]
pub(super) enum Event {
    /// A node's clock ticks (recurring).
    Tick(usize),
    /// A message arrives.
    Deliver(Message),
    /// A snapshot image arrives (boxed: events are moved around a lot).
    SnapshotArrive(Box<Transfer>),
    /// The transport of `node` learns how streaming a snapshot to `peer`
    /// went.
    SnapshotReport {
        node: usize,
        incarnation: u64,
        peer: NodeId,
        success: bool,
    },
    /// A node's round (its fsync) ends, or its ack wait expires.
    Wake(usize, u64),
    /// A client acts (starts an operation or gives up on one).
    Client(usize, u64),
    /// The partition layout changes.
    Partition,
    /// A random node crashes (now, or at its next storage call).
    Crash,
    /// A node crashes now (a crash that waited for its round to end).
    CrashNow(usize, u64),
    /// A crashed node restarts.
    Restart(usize),
    /// A random node is asked to stop cleanly (a leader hands over first).
    Stop,
    /// A node asked to stop checks whether it may stop now.
    StopCheck(usize, u64, u64),
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

/// A snapshot transfer from node `from` (of that incarnation).
#[derive(Debug)]
pub(super) struct Transfer {
    pub from: usize,
    pub incarnation: u64,
    pub message: Message,
    pub source: MemSnapshot,
}

/// The event queue: a heap of keys (earliest first, then in the order
/// scheduled) over a slab of events, so the heap moves one integer
/// instead of whole events. A key is `time << 64 | seq << 24 | slot`.
#[derive(Default)]
struct EventQueue {
    heap: BinaryHeap<std::cmp::Reverse<u128>>,
    slab: Vec<Option<Event>>,
    free: Vec<usize>,
}

/// Slots (events pending at once) a key can name.
const SLOT_BITS: u32 = 24;

impl EventQueue {
    fn push(&mut self, time: u64, seq: u64, event: Event) {
        let slot = match self.free.pop() {
            Some(k) => {
                self.slab[k] = Some(event);
                k
            }
            None => {
                self.slab.push(Some(event));
                self.slab.len() - 1
            }
        };
        assert!(slot < 1 << SLOT_BITS && seq < 1 << (64 - SLOT_BITS));
        let key = (u128::from(time) << 64) | u128::from(seq << SLOT_BITS) | slot as u128;
        self.heap.push(std::cmp::Reverse(key));
    }

    fn pop(&mut self) -> Option<(u64, Event)> {
        let std::cmp::Reverse(key) = self.heap.pop()?;
        let time = (key >> 64) as u64;
        let slot = (key as u64 & ((1 << SLOT_BITS) - 1)) as usize;
        let event = self.slab[slot].take().expect("a scheduled event");
        self.free.push(slot);
        Some((time, event))
    }
}

/// What waits for a node's loop: the simulated counterpart of the
/// production driver's channels. Proposals and reads carry the client
/// operation they belong to.
#[derive(Default)]
pub(super) struct NodeInbox {
    ticks: u32,
    control: VecDeque<Control>,
    pub(super) inbound: VecDeque<Inbound<MemStaged>>,
    pub(super) proposals: VecDeque<(u64, Proposal)>,
    pub(super) reads: VecDeque<(u64, ReadRequest)>,
}

impl LoopInput<MemStaged> for NodeInbox {
    fn next_inbound(&mut self) -> Option<Inbound<MemStaged>> {
        self.inbound.pop_front()
    }
    fn next_proposal(&mut self) -> Option<Proposal> {
        self.proposals.pop_front().map(|(_, p)| p)
    }
    fn next_read(&mut self) -> Option<ReadRequest> {
        self.reads.pop_front().map(|(_, r)| r)
    }
}

/// One simulated server.
pub(super) struct SimNode {
    pub(super) id: NodeId,
    /// The running loop, `None` while down.
    pub(super) rl: Option<SimLoop>,
    /// The durable store while down.
    store: Option<MemStore>,
    /// Bumped whenever the node goes down, so stale timers are recognised.
    pub(super) incarnation: u64,
    pub(super) inbox: NodeInbox,
    /// The node's current round ends at this time (its fsync).
    busy_until: u64,
    /// The ack wait runs until this time.
    hold_until: Option<u64>,
    /// Asked to stop cleanly: refuses new client operations.
    pub(super) stopping: bool,
    /// Commit index last seen (this incarnation), for the checks.
    last_commit: u64,
    /// The term this node was last seen leading (checked once per term).
    led_term: u64,
    /// Whether it was leader of `led_term` at the last check.
    leading: bool,
}

impl SimNode {
    /// True when the node runs and accepts client operations.
    pub(super) fn serving(&self) -> bool {
        self.rl.is_some() && !self.stopping
    }
}

/// The liveness probe write: (node, incarnation, term it was proposed in,
/// its reply).
type Probe = (
    usize,
    u64,
    u64,
    oneshot::Receiver<Result<Applied, WriteError>>,
);

/// Where the liveness phase stands.
#[derive(Default)]
struct Liveness {
    /// Time the faults healed.
    healed_at: u64,
    /// The probe write: (node, incarnation, term it was proposed in, reply).
    probe: Option<Probe>,
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
    queue: EventQueue,
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
    pub(super) shared: Rc<Shared>,
    pub(super) clients: Vec<Client>,
    /// Highest log index of a write acknowledged to a client.
    pub(super) completed_max: u64,
    liveness: Option<Liveness>,
    /// Next client operation id.
    pub(super) next_op: u64,
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
                rl: None,
                store: Some(MemStore::new()),
                incarnation: 0,
                inbox: NodeInbox::default(),
                busy_until: 0,
                hold_until: None,
                stopping: false,
                last_commit: 0,
                led_term: 0,
                leading: false,
            })
            .collect();
        let clients = (0..scenario.clients).map(Client::new).collect();
        Sim {
            seed,
            rng: SmallRng::seed_from_u64(seed),
            now: 0,
            seq: 0,
            queue: EventQueue::default(),
            nodes,
            blocked: vec![false; n * n],
            loss: scenario.loss,
            duplicate: scenario.duplicate,
            long_delay: scenario.long_delay,
            history: Vec::new(),
            chaos: true,
            shared: Rc::new(Shared {
                checker: std::cell::RefCell::new(Checker::new()),
                trace: std::cell::RefCell::new(Trace::new(trace, super::trace_lines())),
                stats: std::cell::RefCell::new(Stats::default()),
            }),
            clients,
            completed_max: 0,
            liveness: None,
            next_op: 1,
            done: false,
            sc: scenario,
        }
    }

    /// The recorded trace (empty unless tracing was on).
    pub fn trace_lines(&self) -> Vec<String> {
        self.shared.trace.borrow().lines()
    }

    /// Runs to the end: chaos, healing, liveness, convergence. Any broken
    /// invariant (or a panic in the core or the loop) is an error.
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
            let at = self.rng.gen_range(1..=2 * self.sc.crash_every_ticks) * TICK;
            self.schedule(at, Event::Transfer);
            let at = self.rng.gen_range(1..=4 * self.sc.crash_every_ticks) * TICK;
            self.schedule(at, Event::Stop);
        }
        if self.sc.replay > 0.0 {
            self.schedule(TICK, Event::Replay);
        }
        self.schedule(self.sc.chaos_ticks * TICK, Event::Heal);
        let end =
            (self.sc.chaos_ticks + self.sc.liveness_ticks + self.sc.converge_ticks + 10) * TICK;
        while !self.done {
            let Some((time, event)) = self.queue.pop() else {
                return Err("event queue ran dry".into());
            };
            if time > end {
                return Err("run did not finish in time".into());
            }
            self.now = time;
            self.shared.stats.borrow_mut().events += 1;
            self.handle(event)?;
            self.check_nodes()?;
        }
        let mut stats = self.shared.stats.borrow().clone();
        let checker = self.shared.checker.borrow();
        stats.leader_terms = checker.leader_terms() as u64;
        stats.final_index = checker.applied_len();
        Ok(stats)
    }

    pub(super) fn schedule(&mut self, delay: u64, event: Event) {
        self.schedule_at(self.now + delay, event);
    }

    pub(super) fn schedule_at(&mut self, time: u64, event: Event) {
        self.seq += 1;
        self.queue.push(time.max(self.now), self.seq, event);
    }

    pub(super) fn record(&self, f: impl FnOnce() -> String) {
        self.shared.record(self.now, f);
    }

    pub(super) fn stats(&self) -> std::cell::RefMut<'_, Stats> {
        self.shared.stats.borrow_mut()
    }

    fn handle(&mut self, ev: Event) -> Result<(), String> {
        match ev {
            Event::Tick(i) => {
                self.schedule(TICK, Event::Tick(i));
                if self.nodes[i].rl.is_some() {
                    self.nodes[i].inbox.ticks += 1;
                    self.run_node(i)?;
                }
            }
            Event::Deliver(m) => self.deliver(m)?,
            Event::SnapshotArrive(t) => {
                let t = *t;
                self.snapshot_arrives(t.from, t.incarnation, t.message, t.source)?
            }
            Event::SnapshotReport {
                node,
                incarnation,
                peer,
                success,
            } => {
                let n = &mut self.nodes[node];
                if n.incarnation == incarnation {
                    if let Some(rl) = n.rl.as_mut() {
                        // The transport frees the peer, then reports.
                        rl.transport_mut().busy.remove(&peer);
                        n.inbox
                            .inbound
                            .push_back(Inbound::SnapshotSent { peer, success });
                        let id = n.id;
                        self.record(|| format!("n{id} snapshot to n{peer} sent: {success}"));
                        self.run_node(node)?;
                    }
                }
            }
            Event::Wake(i, inc) => {
                if self.nodes[i].incarnation == inc {
                    self.run_node(i)?;
                }
            }
            Event::Client(c, op) => self.client_act(c, op)?,
            Event::Partition => self.change_partition(),
            Event::Crash => self.crash_random()?,
            Event::CrashNow(i, inc) => {
                if self.nodes[i].incarnation == inc {
                    self.crash(i)?;
                }
            }
            Event::Stop => self.stop_random()?,
            Event::StopCheck(i, inc, deadline) => self.stop_check(i, inc, deadline)?,
            Event::Transfer => self.transfer_leadership()?,
            Event::Restart(i) => {
                if self.nodes[i].rl.is_none() {
                    self.start_node(i)?;
                }
            }
            Event::Heal => self.heal()?,
            Event::Liveness => self.liveness_step()?,
            Event::Replay => self.replay()?,
        }
        Ok(())
    }

    // ----- the driver -----

    /// Runs node `i`'s loop as the production driver would, for as long as
    /// it is free and has something queued.
    pub(super) fn run_node(&mut self, i: usize) -> Result<(), String> {
        loop {
            let now = self.now;
            let node = &mut self.nodes[i];
            let Some(rl) = node.rl.as_mut() else {
                return Ok(());
            };
            if now < node.busy_until {
                return Ok(());
            }
            if let Some(until) = node.hold_until {
                // The ack wait: only peer traffic is taken meanwhile.
                let more = !node.inbox.proposals.is_empty();
                while rl.waiting_for_acks(more) {
                    let Some(ev) = node.inbox.inbound.pop_front() else {
                        break;
                    };
                    rl.on_inbound(ev);
                }
                if rl.waiting_for_acks(more) && now < until {
                    return Ok(());
                }
                node.hold_until = None;
                self.round(i)?;
                continue;
            }
            // One event, with the production driver's priorities.
            let inbox = &mut node.inbox;
            if inbox.ticks > 0 {
                inbox.ticks -= 1;
                rl.on_tick();
            } else if let Some(c) = inbox.control.pop_front() {
                rl.on_control(c);
            } else if let Some(ev) = inbox.inbound.pop_front() {
                rl.on_inbound(ev);
            } else if let Some((_, p)) = inbox.proposals.pop_front() {
                rl.on_proposal(p);
            } else if let Some((_, r)) = inbox.reads.pop_front() {
                rl.on_read(r);
            } else {
                return Ok(());
            }
            rl.clock().env.time.set(now);
            if let Some(until) = rl.hold_proposals_until(!inbox.proposals.is_empty()) {
                node.hold_until = Some(until);
                self.shared.stats.borrow_mut().ack_waits += 1;
                let inc = node.incarnation;
                self.schedule_at(until, Event::Wake(i, inc));
                continue;
            }
            self.round(i)?;
        }
    }

    /// Collects node `i`'s queued input and runs one round of its loop.
    fn round(&mut self, i: usize) -> Result<(), String> {
        let now = self.now;
        let node = &mut self.nodes[i];
        let rl = node.rl.as_mut().expect("round of a running node");
        let env = rl.clock().env.clone();
        env.time.set(now);
        rl.collect(&mut node.inbox);
        let idle = rl.is_idle();
        let before = (rl.node().role(), rl.node().term());
        let result = rl.round();
        if idle && result.is_ok() && !env.crash_armed.get() {
            // Most rounds are a tick with nothing to do: nothing was sent,
            // answered or written (compaction needs new applies).
            return Ok(());
        }
        let after = (rl.node().role(), rl.node().term());
        let id = node.id;
        if before != after {
            self.record(|| format!("n{id} round: {before:?} -> {after:?}"));
        }
        self.flush_outbox(i);
        let node = &mut self.nodes[i];
        match result {
            Ok(()) => {
                let end = env.time.get();
                if end > now {
                    node.busy_until = end;
                    let inc = node.incarnation;
                    self.schedule_at(end, Event::Wake(i, inc));
                }
                if self.rng.gen_bool(self.sc.flush_probability) {
                    if let Some(rl) = self.nodes[i].rl.as_mut() {
                        rl.store_mut().inner.flush_state_machine();
                    }
                }
                self.poll_clients(Some(i))?;
                self.check_stranded(i)?;
                if env.crash_armed.get() {
                    // An armed crash that met no storage call: it strikes
                    // as the round ends.
                    env.crash_armed.set(false);
                    let inc = self.nodes[i].incarnation;
                    self.schedule_at(end, Event::CrashNow(i, inc));
                }
                Ok(())
            }
            Err(e) => {
                if let Some(v) = env.violation.borrow_mut().take() {
                    return Err(v);
                }
                if !env.crashed.get() {
                    return Err(format!("n{id}: the loop stopped on a storage error: {e}"));
                }
                // Replies sent before the crash point were sent.
                self.poll_clients(Some(i))?;
                self.crash(i)?;
                let down = self.rng.gen_range(1..=self.sc.max_down_ticks) * TICK;
                self.schedule(down, Event::Restart(i));
                Ok(())
            }
        }
    }

    /// Hands what node `i`'s transport sent this round to the network.
    fn flush_outbox(&mut self, i: usize) {
        let Some(rl) = self.nodes[i].rl.as_mut() else {
            return;
        };
        let t = rl.transport_mut();
        let outbox = std::mem::take(&mut t.outbox);
        let snapshots = std::mem::take(&mut t.snapshots);
        for (at, m) in outbox {
            self.send(i, m, at);
        }
        for (at, message, source) in snapshots {
            self.send_snapshot(i, message, source, at);
        }
    }

    /// A snapshot image reaches its receiver: staged as the real receiver
    /// stages it, then handed to its loop.
    fn snapshot_arrives(
        &mut self,
        from: usize,
        incarnation: u64,
        message: Message,
        source: MemSnapshot,
    ) -> Result<(), String> {
        let to = (message.to - 1) as usize;
        let n = self.nodes.len();
        let peer = message.to;
        let reachable = !self.blocked[from * n + to] && self.nodes[to].rl.is_some();
        let delay = self.rng.gen_range(1..=self.sc.max_delay);
        let report = |success| Event::SnapshotReport {
            node: from,
            incarnation,
            peer,
            success,
        };
        if !reachable {
            self.stats().dropped += 1;
            self.schedule(delay, report(false));
            return Ok(());
        }
        let rl = self.nodes[to].rl.as_ref().expect("checked above");
        let staged = stage_image(rl.store(), source, SNAPSHOT_CHUNK_BYTES)
            .map_err(|e| format!("n{peer}: staging a snapshot failed: {e}"))?;
        self.nodes[to]
            .inbox
            .inbound
            .push_back(Inbound::Snapshot(Box::new(IncomingSnapshot {
                message,
                staged,
            })));
        self.schedule(delay, report(true));
        self.run_node(to)
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
        let store = node.store.take().expect("a stopped node has its store");
        let rec = store
            .load()
            .map_err(|e| format!("node {} cannot restart: {e}", node.id))?;
        let init = InitialState {
            hard_state: rec.hard_state,
            snapshot: rec.snapshot,
            entries: rec.entries,
            applied: store.applied_index(),
        };
        let seed = self.seed ^ (node.id << 40) ^ node.incarnation.wrapping_mul(0x9E37_79B9);
        let core = RaftNode::new(cfg, init, seed)
            .map_err(|e| format!("node {} cannot restart: {e}", node.id))?;
        let id = node.id;
        let (snap, commit) = (core.snapshot_meta().index, core.commit_index());
        self.shared
            .checker
            .borrow_mut()
            .on_commit(id, &core, snap, commit)?;
        let env = Rc::new(NodeEnv {
            id,
            time: std::cell::Cell::new(self.now),
            rng: std::cell::RefCell::new(SmallRng::seed_from_u64(seed ^ 0xE4F1)),
            persist_delay: sc.persist_delay,
            flush_probability: sc.flush_probability,
            queue_full: std::cell::Cell::new(if self.chaos { self.loss / 4.0 } else { 0.0 }),
            fsync_crash: std::cell::Cell::new(if self.chaos { sc.fsync_crash } else { 0.0 }),
            crash_armed: std::cell::Cell::new(false),
            crashed: std::cell::Cell::new(false),
            violation: std::cell::RefCell::new(None),
            shared: self.shared.clone(),
        });
        let applied = store.applied_index();
        let rl = RaftLoop::new(
            core,
            SimStore {
                inner: store,
                env: env.clone(),
            },
            SimTransport {
                env: env.clone(),
                outbox: Vec::new(),
                snapshots: Vec::new(),
                busy: Default::default(),
            },
            SimClock { env },
            LoopSettings {
                snapshot_threshold: sc.snapshot_threshold,
                names: Default::default(),
                auto_compaction: sc.auto_compaction,
            },
            None,
        );
        node.rl = Some(rl);
        node.last_commit = commit;
        node.leading = false;
        node.busy_until = 0;
        node.hold_until = None;
        node.stopping = false;
        node.inbox = NodeInbox::default();
        self.record(|| format!("n{id} START applied={applied} commit={commit} snap={snap}"));
        Ok(())
    }

    /// Takes node `i` down: its loop and everything queued for it are
    /// gone (clients waiting on it see their replies dropped), its store
    /// keeps only what was durable.
    fn crash(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let Some(rl) = node.rl.take() else {
            return Ok(());
        };
        let (mut store, _) = rl.into_parts();
        store.inner.crash();
        node.store = Some(store.inner);
        node.inbox = NodeInbox::default();
        node.incarnation += 1;
        node.stopping = false;
        let id = node.id;
        self.stats().crashes += 1;
        self.record(|| format!("n{id} CRASH"));
        self.poll_clients(Some(i))
    }

    fn crash_random(&mut self) -> Result<(), String> {
        if !self.chaos {
            return Ok(());
        }
        let i = match self.current_leader() {
            Some(l) if self.rng.gen_bool(0.5) => l,
            _ => self.rng.gen_range(0..self.nodes.len()),
        };
        if let Some(rl) = self.nodes[i].rl.as_ref() {
            if self.rng.gen_bool(0.75) {
                // At its next storage call: in the middle of a round.
                rl.clock().env.crash_armed.set(true);
                let id = self.nodes[i].id;
                self.record(|| format!("n{id} crash armed"));
            } else if self.now < self.nodes[i].busy_until {
                let (at, inc) = (self.nodes[i].busy_until, self.nodes[i].incarnation);
                self.schedule_at(at, Event::CrashNow(i, inc));
            } else {
                self.crash(i)?;
            }
        }
        let down = self.rng.gen_range(1..=self.sc.max_down_ticks) * TICK;
        self.schedule(down, Event::Restart(i));
        let next = self.rng.gen_range(1..=2 * self.sc.crash_every_ticks) * TICK;
        self.schedule(next, Event::Crash);
        Ok(())
    }

    fn transfer_leadership(&mut self) -> Result<(), String> {
        if !self.chaos {
            return Ok(());
        }
        if let Some(l) = self.current_leader() {
            let id = self.nodes[l].id;
            self.stats().transfers += 1;
            self.record(|| format!("n{id} TRANSFER requested"));
            self.nodes[l]
                .inbox
                .control
                .push_back(Control::TransferLeadership);
            self.run_node(l)?;
        }
        let next = self.rng.gen_range(1..=2 * self.sc.crash_every_ticks) * TICK;
        self.schedule(next, Event::Transfer);
        Ok(())
    }

    /// A clean stop, as on SIGTERM: a leader hands over first (waiting at
    /// most an election timeout), then the node stops taking requests,
    /// answers everyone waiting and goes down; it restarts later.
    fn stop_random(&mut self) -> Result<(), String> {
        if !self.chaos {
            return Ok(());
        }
        let next = self.rng.gen_range(1..=4 * self.sc.crash_every_ticks) * TICK;
        self.schedule(next, Event::Stop);
        let i = match self.current_leader() {
            Some(l) if self.rng.gen_bool(0.7) => l,
            _ => self.rng.gen_range(0..self.nodes.len()),
        };
        let node = &mut self.nodes[i];
        if !node.serving() {
            return Ok(());
        }
        node.stopping = true;
        let (id, inc) = (node.id, node.incarnation);
        let leads = node
            .rl
            .as_ref()
            .is_some_and(|rl| rl.node().role() == Role::Leader);
        if leads {
            node.inbox.control.push_back(Control::TransferLeadership);
        }
        self.record(|| format!("n{id} STOP requested"));
        let deadline = self.now + u64::from(self.sc.election_ticks) * TICK;
        self.schedule(0, Event::StopCheck(i, inc, deadline));
        self.run_node(i)
    }

    fn stop_check(&mut self, i: usize, inc: u64, deadline: u64) -> Result<(), String> {
        let node = &self.nodes[i];
        if node.incarnation != inc {
            return Ok(());
        }
        let Some(rl) = node.rl.as_ref() else {
            return Ok(());
        };
        let leads = rl.node().role() == Role::Leader;
        if (leads && self.now < deadline) || self.now < node.busy_until {
            // Still handing over, or its round (fsync) is not done.
            self.schedule(TICK / 2, Event::StopCheck(i, inc, deadline));
            return Ok(());
        }
        // The driver's shutdown: queued requests go to the loop, which
        // answers everyone; the store is flushed.
        let node = &mut self.nodes[i];
        let mut rl = node.rl.take().expect("checked above");
        let mut waiting = Vec::new();
        for (op, p) in node.inbox.proposals.drain(..) {
            waiting.push(op);
            rl.on_proposal(p);
        }
        for (op, r) in node.inbox.reads.drain(..) {
            waiting.push(op);
            rl.on_read(r);
        }
        rl.shutdown(&Ok(()));
        let (mut store, _) = rl.into_parts();
        store.flush().map_err(|e| e.to_string())?;
        store.inner.flush_state_machine();
        node.store = Some(store.inner);
        node.inbox = NodeInbox::default();
        node.incarnation += 1;
        node.stopping = false;
        let id = node.id;
        self.stats().stops += 1;
        self.record(|| format!("n{id} STOPPED cleanly"));
        // Every client waiting on it got an answer, not a dropped reply.
        self.check_answered_on_stop(i, inc)?;
        let down = self.rng.gen_range(1..=self.sc.max_down_ticks) * TICK;
        self.schedule(down, Event::Restart(i));
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
            match self.nodes[i].rl.as_ref() {
                None => self.start_node(i)?,
                Some(rl) => {
                    let env = &rl.clock().env;
                    env.queue_full.set(0.0);
                    env.fsync_crash.set(0.0);
                    env.crash_armed.set(false);
                }
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
                if let Some((i, inc, term, mut rx)) = lv.probe.take() {
                    match rx.try_recv() {
                        Ok(Ok(applied)) => {
                            lv.committed_at = Some(self.now);
                            self.stats().heal_to_commit_ticks = elapsed;
                            let index = applied.index;
                            self.record(|| format!("LIVENESS probe committed at {index}"));
                            return Ok(());
                        }
                        Err(oneshot::error::TryRecvError::Empty) => {
                            let node = &self.nodes[i];
                            let gone = node.incarnation != inc
                                || node.rl.as_ref().is_none_or(|rl| {
                                    rl.node().term() != term || rl.node().role() != Role::Leader
                                });
                            if !gone {
                                lv.probe = Some((i, inc, term, rx));
                            }
                        }
                        // Refused or lost: propose again.
                        _ => {}
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
                        let cmd = crate::kv::Command::Put(crate::kv::PutRequest {
                            key: b"probe".to_vec(),
                            value: format!("seed-{}", self.seed).into_bytes(),
                            ..Default::default()
                        });
                        let (tx, rx) = oneshot::channel();
                        let node = &mut self.nodes[i];
                        let term = node.rl.as_ref().map_or(0, |rl| rl.node().term());
                        let op = self.next_op;
                        self.next_op += 1;
                        node.inbox.proposals.push_back((
                            op,
                            Proposal {
                                cmd: cmd.encode(),
                                reply: tx,
                            },
                        ));
                        lv.probe = Some((i, node.incarnation, term, rx));
                        let id = node.id;
                        self.record(|| format!("LIVENESS probe proposed at n{id}"));
                        self.run_node(i)?;
                    }
                }
            }
            Some(at) => {
                let target = self.shared.checker.borrow().applied_len();
                let converged = self.nodes.iter().all(|n| {
                    n.rl.as_ref()
                        .is_some_and(|rl| rl.store().applied_index() == target)
                }) && self.clients.iter().all(|c| c.is_idle());
                if converged {
                    let checker = self.shared.checker.borrow();
                    let want = converged_state(checker.reference())?;
                    for n in &self.nodes {
                        let store = n.rl.as_ref().expect("converged").store();
                        let mine = converged_state(store)?;
                        if mine != want {
                            return Err(format!(
                                "replica n{} converged to a different state than the reference: \
                                 {mine:?} vs {want:?}",
                                n.id
                            ));
                        }
                    }
                    drop(checker);
                    self.record(|| format!("CONVERGED at index {target}"));
                    self.done = true;
                } else if (self.now - at) / TICK > self.sc.converge_ticks {
                    let applied: Vec<u64> = self
                        .nodes
                        .iter()
                        .map(|n| n.rl.as_ref().map_or(0, |rl| rl.store().applied_index()))
                        .collect();
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
            .filter_map(|(i, n)| n.rl.as_ref().map(|rl| (i, rl.node())))
            .filter(|(_, c)| c.role() == Role::Leader)
            .max_by_key(|(_, c)| c.term())
            .map(|(i, _)| i)
    }

    // ----- checks -----

    /// The per-event checks on every live node.
    fn check_nodes(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let Some(rl) = node.rl.as_ref() else {
                continue;
            };
            let core = rl.node();
            let (term, commit) = (core.term(), core.commit_index());
            let leads = core.role() == Role::Leader;
            let new_leader = leads && !(node.leading && node.led_term == term);
            if !new_leader && commit == node.last_commit && leads == node.leading {
                continue;
            }
            let mut checker = self.shared.checker.borrow_mut();
            if new_leader {
                // Once per node and term is enough: the checker remembers
                // every term's leader.
                checker.observe_leader(node.id, term, core)?;
            }
            if commit < node.last_commit {
                return Err(format!(
                    "n{}: commit index went backwards from {} to {commit}",
                    node.id, node.last_commit
                ));
            }
            if commit > node.last_commit {
                // §5.4.2: a leader commits by counting replicas only an
                // entry of its own term (older ones commit with it).
                let still_leading = leads && node.leading && node.led_term == term;
                if still_leading && core.term_at(commit) != Some(term) {
                    return Err(format!(
                        "n{}: leader of term {term} committed index {commit} of term {:?} by \
                         counting replicas",
                        node.id,
                        core.term_at(commit)
                    ));
                }
                checker.on_commit(node.id, core, node.last_commit, commit)?;
            }
            drop(checker);
            let node = &mut self.nodes[i];
            node.last_commit = commit;
            node.leading = leads;
            if leads {
                node.led_term = term;
            }
        }
        Ok(())
    }
}

/// What converged replicas must agree on: revision, compact revision, every
/// key's record, and the whole history from the compact revision on.
type ConvergedState = (i64, i64, Vec<crate::kv::KeyValue>, Vec<crate::kv::Event>);

/// Reads [`ConvergedState`] from the reference model or a replica.
fn converged_state(store: &impl ConvergedView) -> Result<ConvergedState, String> {
    store
        .converged()
        .map_err(|e| format!("reading a converged state: {e}"))
}

/// A store whose whole state the convergence check can read.
trait ConvergedView {
    fn converged(&self) -> Result<ConvergedState, String>;
}

/// Every key of the run (they are all below `0xFF`).
fn everything() -> crate::kv::RangeRequest {
    crate::kv::RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    }
}

impl ConvergedView for crate::kv::MemMvcc {
    fn converged(&self) -> Result<ConvergedState, String> {
        let compact = self.compact_revision();
        let kvs = self
            .range(&everything())
            .map_err(|e| e.to_string())?
            .body
            .kvs;
        let events = self
            .events(
                compact.max(1),
                crate::kv::KeyRange::new(&[0], &[0]),
                usize::MAX,
            )
            .map_err(|e| e.to_string())?;
        Ok((self.revision(), compact, kvs, events))
    }
}

impl<S: crate::storage::StateMachine> ConvergedView for S {
    fn converged(&self) -> Result<ConvergedState, String> {
        let compact = self.compact_revision().map_err(|e| e.to_string())?;
        let kvs = self
            .range(&everything())
            .map_err(|e| e.to_string())?
            .body
            .kvs;
        let events = self
            .events(
                compact.max(1),
                crate::kv::KeyRange::new(&[0], &[0]),
                usize::MAX,
            )
            .map_err(|e| e.to_string())?;
        let revision = self.revision().map_err(|e| e.to_string())?;
        Ok((revision, compact, kvs, events))
    }
}
