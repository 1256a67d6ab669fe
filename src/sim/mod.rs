//! Deterministic simulation of a RaftKV cluster: the proof that the
//! node's Raft loop and the consensus core keep their promises under
//! faults.
//!
//! Every simulated node runs the production [`RaftLoop`] — the only code
//! that interprets a Ready — over [`MemStore`] (the in-memory twin of the
//! sled store, wrapped with crash points), a simulated network and virtual
//! time (`env.rs`). The simulation is the loop's driver, shaped like the
//! production one: events wait in a node's inbox while it is busy (a round
//! that fsyncs takes time), ticks come first, proposals are held for the
//! ack wait when the loop asks. Clients write and read through the loop's
//! own [`Proposal`] / [`ReadRequest`] entry points.
//!
//! One seeded RNG drives everything: a cluster of 3 or 5 nodes, a network
//! that loses, delays, reorders, duplicates and replays messages and is
//! cut by symmetric and one-way partitions that change over time, crashes
//! (between rounds, or in the middle of one at a storage call — an fsync
//! most likely — losing what was not durable yet and every message not yet
//! handed over; applies written before a crashing fsync may or may not have
//! reached the disk, as with sled), clean stops (a leader hands over first,
//! then everything waiting is answered), restarts from the durable state
//! only, leadership transfers, compaction by the loop's policy and streamed
//! snapshots staged and installed by the receiving loop.
//!
//! After every event the [`checker`] verifies election safety, log
//! matching, leader completeness, the current-term commit rule (§5.4.2),
//! state machine safety, that committed entries are never lost and that
//! commit indexes never go backwards. Every answer a client gets is checked:
//! an acknowledged write against the reference state machine (its index and
//! result), a refused one never appears, a read against the history of
//! writes. Nothing may be left hanging that the loop could have answered: a
//! read after its node lost leadership, a write after its node applied the
//! index it committed at, anything on a clean stop. After the chaos phase
//! the faults heal and the run must show liveness: a leader commits a new
//! write within a bounded number of ticks, and every replica converges to
//! the reference state.
//!
//! Runs are reproducible from the seed alone (no wall clock, no threads,
//! no hash-order dependence). A failing run is repeated with tracing on and
//! reported with its seed, scenario and the last events ([`SimFailure`]).
//! The `RAFTKV_SIM_SEEDS=N` and `RAFTKV_SIM_SEED=S` environment variables
//! choose how many seeds run, or which single seed replays
//! ([`seeds_from_env`]); `RAFTKV_SIM_TRACE=N` keeps the last `N` events of
//! a failing run instead of 400.
//!
//! [`RaftLoop`]: crate::node::RaftLoop
//! [`MemStore`]: crate::storage::mem::MemStore
//! [`Proposal`]: crate::node::Proposal
//! [`ReadRequest`]: crate::node::ReadRequest

pub mod checker;
mod client;
mod cluster;
mod env;
mod network;
pub mod trace;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub use cluster::Sim;

/// Simulated time units per tick (network delays are drawn in units, so a
/// message can take a fraction of a tick). A unit is what the loop's clock
/// calls a millisecond (its 2 ms ack wait is 2 units).
pub const TICK: u64 = 10;

/// The knobs of one simulated run, all derived from the seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Cluster size (3 or 5).
    pub nodes: usize,
    /// Core config: PreVote on.
    pub pre_vote: bool,
    /// Core config: CheckQuorum on.
    pub check_quorum: bool,
    /// Core config: minimum election timeout in ticks.
    pub election_ticks: u32,
    /// Core config: heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
    /// Core config: inflight window.
    pub max_inflight: usize,
    /// Core config: entries per AppendEntries.
    pub max_entries_per_msg: usize,
    /// Core config: bytes per AppendEntries.
    pub max_bytes_per_msg: usize,
    /// Probability that a message is lost during the chaos phase.
    pub loss: f64,
    /// Probability that a message is delivered twice during the chaos phase.
    pub duplicate: f64,
    /// Largest network delay in time units (delays are uniform in
    /// `1..=max_delay`, which also reorders messages).
    pub max_delay: u64,
    /// Probability that a message is held up for a long time (up to
    /// `long_delay_ticks`), like a packet stuck behind a stalled connection:
    /// it arrives after elections have moved on.
    pub long_delay: f64,
    /// Longest such hold-up, in ticks.
    pub long_delay_ticks: u64,
    /// Probability per tick that the network replays an old message
    /// (election messages are favoured: they are few, and replaying them
    /// into later terms is what stale-vote bugs need).
    pub replay: f64,
    /// Largest time an fsync (a `save`) takes, in time units: the node is
    /// busy meanwhile, events wait in its inbox, and what the loop sends
    /// after it leaves later.
    pub persist_delay: u64,
    /// Mean ticks between crashes during the chaos phase (0 = none); the
    /// same rate drives leadership transfers, and clean stops at half of it.
    pub crash_every_ticks: u64,
    /// Probability that a node crashes during one of its fsyncs (a `save`,
    /// compaction or install) in the chaos phase: the durability-ordering
    /// bugs live there.
    pub fsync_crash: f64,
    /// Longest downtime of a crashed node, in ticks.
    pub max_down_ticks: u64,
    /// Mean ticks between partition changes during the chaos phase (0 = none).
    pub partition_every_ticks: u64,
    /// Applied entries between snapshots (0 = never compact).
    pub snapshot_threshold: u64,
    /// Probability that a node's applied state becomes durable after a
    /// round, or with a durable write (the in-memory state machine flushes
    /// explicitly; sled's are durable with its next sync).
    pub flush_probability: f64,
    /// Number of clients.
    pub clients: usize,
    /// Largest pause between two operations of a client, in ticks.
    pub think_ticks: u64,
    /// Fraction of operations that are reads.
    pub read_ratio: f64,
    /// Length of the chaos phase, in ticks.
    pub chaos_ticks: u64,
    /// Ticks after healing within which a new write must commit.
    pub liveness_ticks: u64,
    /// Ticks after that write within which every replica must converge.
    pub converge_ticks: u64,
    /// The leaders' automatic history compaction (the loop's policy, on
    /// virtual time), besides the clients' own `Compact` commands.
    pub auto_compaction: crate::node::compaction::AutoCompaction,
}

impl Scenario {
    /// The scenario a seed stands for: a random mix of cluster size, core
    /// limits and fault rates (including calm and very hostile runs).
    pub fn from_seed(seed: u64) -> Self {
        let mut r = SmallRng::seed_from_u64(seed ^ 0x5CE7_A210);
        let pick = |r: &mut SmallRng, xs: &[f64]| xs[r.gen_range(0..xs.len())];
        let mut sc = Scenario {
            nodes: if r.gen_bool(0.6) { 3 } else { 5 },
            pre_vote: r.gen_bool(0.85),
            check_quorum: r.gen_bool(0.85),
            election_ticks: 10,
            heartbeat_ticks: r.gen_range(1..=3),
            max_inflight: r.gen_range(1..=8),
            max_entries_per_msg: [1, 3, 8, 64][r.gen_range(0..4)],
            max_bytes_per_msg: if r.gen_bool(0.3) { 64 } else { 1 << 20 },
            loss: pick(&mut r, &[0.0, 0.01, 0.05, 0.15]),
            duplicate: pick(&mut r, &[0.0, 0.02, 0.1]),
            max_delay: r.gen_range(1..=25),
            long_delay: pick(&mut r, &[0.0, 0.0, 0.01, 0.03]),
            long_delay_ticks: 40,
            replay: pick(&mut r, &[0.0, 0.0, 0.1, 0.3]),
            persist_delay: pick(&mut r, &[0.0, 3.0, 8.0]) as u64,
            crash_every_ticks: pick(&mut r, &[0.0, 60.0, 25.0]) as u64,
            max_down_ticks: r.gen_range(5..=40),
            partition_every_ticks: pick(&mut r, &[0.0, 40.0, 15.0, 6.0]) as u64,
            snapshot_threshold: pick(&mut r, &[0.0, 4.0, 10.0, 30.0]) as u64,
            flush_probability: pick(&mut r, &[0.1, 0.5, 1.0]),
            clients: r.gen_range(1..=4),
            think_ticks: r.gen_range(0..=3),
            read_ratio: pick(&mut r, &[0.2, 0.4]),
            chaos_ticks: 120,
            liveness_ticks: 300,
            converge_ticks: 300,
            fsync_crash: 0.0,
            auto_compaction: Default::default(),
        };
        sc.fsync_crash = pick(&mut r, &[0.0, 0.0, 0.003, 0.01]);
        if r.gen_bool(0.35) {
            sc.make_churn(&mut r);
        }
        if r.gen_bool(0.5) {
            // Virtual milliseconds: a retention of a few dozen ticks, so
            // compactions happen during the run.
            let ms = r.gen_range(100..=800);
            sc.auto_compaction = crate::node::compaction::AutoCompaction::Periodic(
                std::time::Duration::from_millis(ms),
            );
        }
        sc
    }

    /// The "churn" profile: leaders lose their seat every few ticks while
    /// replication is slow (one entry per message, a tiny window, slow
    /// disks), so uncommitted suffixes of several terms pile up on
    /// different nodes. That is where the subtle rules matter: voting
    /// twice, the up-to-date check, and §5.4.2 (Figure 8).
    fn make_churn(&mut self, r: &mut SmallRng) {
        self.max_entries_per_msg = 1;
        self.max_inflight = r.gen_range(1..=2);
        self.persist_delay = 8;
        self.partition_every_ticks = r.gen_range(3..=8);
        self.crash_every_ticks = r.gen_range(5..=15);
        self.fsync_crash = r.gen_range(0.0..0.02);
        self.max_down_ticks = r.gen_range(3..=15);
        self.loss = r.gen_range(0.0..0.05);
        self.long_delay = r.gen_range(0.0..0.08);
        self.duplicate = r.gen_range(0.0..0.15);
        self.replay = r.gen_range(0.0..0.5);
        // Without PreVote, failed candidates run real elections back to
        // back, and late votes from the previous term meet the next one.
        self.pre_vote = r.gen_bool(0.5);
        // A deposed leader that does not notice (no CheckQuorum) keeps
        // taking reads: ReadIndex must still refuse to serve them.
        self.check_quorum = r.gen_bool(0.6);
        self.read_ratio = 0.5;
        self.think_ticks = 0;
        self.clients = 4;
        self.chaos_ticks = 200;
    }
}

/// Counters of what happened in a run (to show the faults and features
/// were really exercised).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost (loss, partition, crashed receiver).
    pub dropped: u64,
    /// Terms that had a leader.
    pub leader_terms: u64,
    /// Writes acknowledged to clients (committed and applied).
    pub writes_ok: u64,
    /// Writes whose entries were overwritten (definitely failed).
    pub writes_failed: u64,
    /// Operations abandoned (timeout, node crash, leadership lost).
    pub abandoned: u64,
    /// ReadIndex reads answered and checked.
    pub reads_ok: u64,
    /// Proposals or reads refused by non-leaders.
    pub redirects: u64,
    /// Crashes.
    pub crashes: u64,
    /// Leadership transfers started.
    pub transfers: u64,
    /// Clean stops (a leader hands over first).
    pub stops: u64,
    /// Partition changes.
    pub partitions: u64,
    /// Log compactions.
    pub compactions: u64,
    /// Compactions that stopped short of the applied index (the loop kept
    /// the log for a snapshot it was streaming).
    pub compactions_kept_for_transfer: u64,
    /// Times a leader held its proposals for the ack wait.
    pub ack_waits: u64,
    /// InstallSnapshot messages sent.
    pub snapshots_sent: u64,
    /// Snapshots installed by followers.
    pub snapshots_installed: u64,
    /// Ticks from healing to the liveness write being applied.
    pub heal_to_commit_ticks: u64,
    /// Final length of the committed log.
    pub final_index: u64,
}

impl Stats {
    /// Adds another run's counters (maxima for the tick measure).
    pub fn add(&mut self, o: &Stats) {
        self.events += o.events;
        self.delivered += o.delivered;
        self.dropped += o.dropped;
        self.leader_terms += o.leader_terms;
        self.writes_ok += o.writes_ok;
        self.writes_failed += o.writes_failed;
        self.abandoned += o.abandoned;
        self.reads_ok += o.reads_ok;
        self.redirects += o.redirects;
        self.crashes += o.crashes;
        self.transfers += o.transfers;
        self.stops += o.stops;
        self.partitions += o.partitions;
        self.compactions += o.compactions;
        self.compactions_kept_for_transfer += o.compactions_kept_for_transfer;
        self.ack_waits += o.ack_waits;
        self.snapshots_sent += o.snapshots_sent;
        self.snapshots_installed += o.snapshots_installed;
        self.heal_to_commit_ticks = self.heal_to_commit_ticks.max(o.heal_to_commit_ticks);
        self.final_index += o.final_index;
    }
}

/// A failed run: everything needed to understand and replay it.
#[derive(Debug)]
pub struct SimFailure {
    /// The seed (replay with `RAFTKV_SIM_SEED=<seed>`).
    pub seed: u64,
    /// The scenario it stood for.
    pub scenario: Scenario,
    /// What went wrong.
    pub error: String,
    /// The last events before the failure, oldest first.
    pub trace: Vec<String>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "simulation failed for seed {}: {}",
            self.seed, self.error
        )?;
        writeln!(
            f,
            "replay with: RAFTKV_SIM_SEED={} cargo test --test simulation",
            self.seed
        )?;
        writeln!(f, "scenario: {:?}", self.scenario)?;
        writeln!(f, "last {} events:", self.trace.len())?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Lines of trace kept for a failure report: `RAFTKV_SIM_TRACE=N`, else 400.
fn trace_lines() -> usize {
    std::env::var("RAFTKV_SIM_TRACE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(400)
}

/// Runs one seed's scenario. On failure the run is repeated with tracing
/// on, and the failure carries the trace.
pub fn run_seed(seed: u64) -> Result<Stats, Box<SimFailure>> {
    run_scenario(seed, Scenario::from_seed(seed))
}

/// Runs `scenario` with `seed` (see [`run_seed`]).
pub fn run_scenario(seed: u64, scenario: Scenario) -> Result<Stats, Box<SimFailure>> {
    match Sim::new(seed, scenario.clone(), false).run() {
        Ok(stats) => Ok(stats),
        Err(first) => {
            let mut sim = Sim::new(seed, scenario.clone(), true);
            let second = sim.run();
            let error = match second {
                Err(e) => e,
                Ok(_) => format!("{first} (did NOT reproduce with tracing on: nondeterminism!)"),
            };
            Err(Box::new(SimFailure {
                seed,
                scenario,
                error,
                trace: sim.trace_lines(),
            }))
        }
    }
}

/// The seeds to run: `RAFTKV_SIM_SEED=S` → just `S`; else
/// `RAFTKV_SIM_SEEDS=N` → `0..N`; else `0..default`.
pub fn seeds_from_env(default: u64) -> Vec<u64> {
    if let Some(s) = std::env::var("RAFTKV_SIM_SEED")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return vec![s];
    }
    let n = std::env::var("RAFTKV_SIM_SEEDS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(default);
    (0..n).collect()
}
