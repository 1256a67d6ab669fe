//! Throughput of the pure consensus core, with no I/O: how many proposals a
//! 3-node cluster of [`RaftNode`]s commits per second when each node's
//! Ready is "persisted" to an in-memory log store and messages are handed
//! straight to the addressee, and how fast a follower steps appends.
//!
//! This is the ceiling the runtime works under: what is left of a write's
//! cost in the real node is storage, HTTP and thread hand-offs.
//!
//! ```sh
//! cargo bench --bench core
//! cargo bench --bench core -- commit_batch/64     # one case
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use raftkv::raft::{
    Config, InitialState, Message, MessageBody, NodeId, RaftNode, Ready, Role, SnapshotMeta,
};
use raftkv::storage::mem::MemLogStore;
use raftkv::storage::LogStore;

/// A 3-node cluster whose network is a queue and whose disks are in memory.
struct Net {
    nodes: Vec<RaftNode>,
    stores: Vec<MemLogStore>,
    queue: VecDeque<Message>,
    /// Every message delivered, when `record` is on.
    record: bool,
    recorded: Vec<Message>,
}

impl Net {
    fn new() -> Net {
        Net::with_recording(false)
    }

    fn with_recording(record: bool) -> Net {
        let voters: Vec<NodeId> = vec![1, 2, 3];
        let nodes = voters
            .iter()
            .map(|&id| {
                RaftNode::new(
                    Config::new(id, voters.clone()),
                    InitialState::default(),
                    7 + id,
                )
                .expect("valid config")
            })
            .collect();
        let mut net = Net {
            nodes,
            stores: (0..3).map(|_| MemLogStore::new()).collect(),
            queue: VecDeque::new(),
            record,
            recorded: Vec::new(),
        };
        // Tick everyone until a leader is elected (bounded).
        for _ in 0..10_000 {
            for n in &mut net.nodes {
                n.tick();
            }
            net.settle();
            if net.leader().is_some() {
                return net;
            }
        }
        panic!("no leader elected");
    }

    fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.role() == Role::Leader)
    }

    fn handle(&mut self, i: usize, rd: Ready) {
        self.queue.extend(rd.early_messages);
        let store = &mut self.stores[i];
        if let Some(meta) = rd.snapshot {
            store.reset_to_snapshot(meta).expect("reset");
        }
        store
            .save(rd.hard_state.as_ref(), &rd.entries)
            .expect("in-memory save");
        self.queue.extend(rd.messages);
        self.nodes[i].advance();
    }

    /// Runs Readys and deliveries until nothing is left to do.
    fn settle(&mut self) {
        loop {
            for i in 0..self.nodes.len() {
                while self.nodes[i].has_ready() {
                    let rd = self.nodes[i].ready();
                    self.handle(i, rd);
                }
            }
            let Some(m) = self.queue.pop_front() else {
                return;
            };
            if self.record {
                self.recorded.push(m.clone());
            }
            let to = (m.to - 1) as usize;
            self.nodes[to].step(m);
        }
    }

    /// Proposes `batch` commands on the leader and runs until they commit.
    fn commit(&mut self, batch: &[Vec<u8>]) -> u64 {
        let l = self.leader().expect("a leader");
        let out = self.nodes[l].propose(batch.to_vec()).expect("leader");
        let target = out.first_index + batch.len() as u64 - 1;
        self.settle();
        let commit = self.nodes[l].commit_index();
        assert!(commit >= target, "commit {commit} < {target}");
        // Keep the logs short so memory does not grow with the run.
        let applied = self.nodes[l].applied_index();
        if applied > 4096 {
            for i in 0..self.nodes.len() {
                let a = self.nodes[i].applied_index();
                if let Some(term) = self.nodes[i].term_at(a) {
                    let meta = SnapshotMeta { index: a, term };
                    if self.nodes[i].compact(meta).is_ok() {
                        let _ = self.stores[i].compact(meta);
                    }
                }
            }
        }
        commit
    }
}

fn commands(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("put key-{i:06} {}", "v".repeat(100)).into_bytes())
        .collect()
}

/// Proposals committed end to end by the core of a 3-node cluster, per
/// batch size (one `propose` call per batch, as the runtime batches).
fn bench_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("commit_batch");
    for &size in &[1usize, 64, 256] {
        let batch = commands(size);
        let mut net = Net::new();
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &batch, |b, batch| {
            b.iter(|| net.commit(batch))
        });
    }
    group.finish();
}

/// A follower stepping the appends of 64-entry batches (and handing out
/// their Readys): the per-entry cost of the follower side.
fn bench_follower_step(c: &mut Criterion) {
    // Record a whole run from the first election on, so that a fresh node
    // can replay everything its counterpart received.
    let mut net = Net::with_recording(true);
    let leader = net.leader().expect("leader") as NodeId + 1;
    let follower = if leader == 2 { 3 } else { 2 };
    let batch = commands(64);
    for _ in 0..64 {
        net.commit(&batch);
    }
    let appends: Vec<Message> = net
        .recorded
        .iter()
        .filter(|m| m.to == follower)
        .cloned()
        .collect();
    let entries: u64 = appends
        .iter()
        .map(|m| match &m.body {
            MessageBody::AppendEntries { entries, .. } => entries.len() as u64,
            _ => 0,
        })
        .sum();
    let mut group = c.benchmark_group("follower_step");
    group.throughput(Throughput::Elements(entries));
    group.bench_function("appends_of_64", |b| {
        b.iter_batched(
            || {
                let node = RaftNode::new(
                    Config::new(follower, vec![1, 2, 3]),
                    InitialState::default(),
                    99,
                )
                .expect("valid config");
                (node, MemLogStore::new(), appends.clone())
            },
            |(mut node, mut store, msgs)| {
                for m in msgs {
                    node.step(m);
                    while node.has_ready() {
                        let rd = node.ready();
                        store
                            .save(rd.hard_state.as_ref(), &rd.entries)
                            .expect("in-memory save");
                        node.advance();
                    }
                }
                assert!(node.last_index() >= entries);
                node
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_commit, bench_follower_step
}
criterion_main!(benches);
