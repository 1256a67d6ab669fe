//! Unit tests of the core, named after the paper sections they exercise
//! ("Raft paper" = the extended paper; "§9.6", "§6.4" = Ongaro's
//! dissertation). A tiny synchronous network drives whole clusters; each
//! test pokes at one rule.

use std::collections::{BTreeMap, HashSet, VecDeque};

use super::*;
use crate::storage::{mem::MemLogStore, LogStore};

fn cmd(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        payload: EntryPayload::Command(format!("{index}@{term}").into_bytes()),
    }
}

fn log_of(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(k, &t)| ent(k as u64 + 1, t))
        .collect()
}

/// A synchronous in-memory network: Readys are handled at once, messages
/// are delivered in FIFO order unless the link is cut.
struct Net {
    nodes: BTreeMap<NodeId, RaftNode>,
    stores: BTreeMap<NodeId, MemLogStore>,
    applied: BTreeMap<NodeId, Vec<Entry>>,
    reads: BTreeMap<NodeId, Vec<ReadState>>,
    queue: VecDeque<Message>,
    /// Directed links that drop everything.
    cut: HashSet<(NodeId, NodeId)>,
    /// Every message delivered, for assertions.
    delivered: Vec<Message>,
}

impl Net {
    fn new(n: u64) -> Self {
        Self::with(n, |_| {}, |_| InitialState::default())
    }

    fn with(n: u64, tweak: impl Fn(&mut Config), init: impl Fn(NodeId) -> InitialState) -> Self {
        let voters: Vec<NodeId> = (1..=n).collect();
        let mut net = Net {
            nodes: BTreeMap::new(),
            stores: BTreeMap::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: HashSet::new(),
            delivered: Vec::new(),
        };
        for id in 1..=n {
            let mut cfg = Config::new(id, voters.clone());
            tweak(&mut cfg);
            let st = init(id);
            let mut store = MemLogStore::new();
            store.save(Some(&st.hard_state), &st.entries).unwrap();
            net.stores.insert(id, store);
            net.nodes
                .insert(id, RaftNode::new(cfg, st, 42 + id).unwrap());
            net.applied.insert(id, Vec::new());
            net.reads.insert(id, Vec::new());
        }
        net
    }

    fn node(&mut self, id: NodeId) -> &mut RaftNode {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Handles every pending Ready of `id`.
    fn pump(&mut self, id: NodeId) {
        while self.nodes[&id].has_ready() {
            let rd = self.node(id).ready();
            assert!(
                rd.messages
                    .iter()
                    .chain(&rd.early_messages)
                    .all(|m| m.from == id && m.to != id),
                "a Ready never carries messages to the node itself"
            );
            // Early messages go out before persisting (as a runtime may).
            self.queue.extend(rd.early_messages);
            let store = self.stores.get_mut(&id).unwrap();
            if let Some(meta) = rd.snapshot {
                store.reset_to_snapshot(meta).unwrap();
            }
            store.save(rd.hard_state.as_ref(), &rd.entries).unwrap();
            self.queue.extend(rd.messages);
            self.applied
                .get_mut(&id)
                .unwrap()
                .extend(rd.committed_entries);
            self.reads.get_mut(&id).unwrap().extend(rd.read_states);
            self.node(id).advance();
        }
    }

    /// Runs until no Ready and no message is left.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.pump(id);
            }
            let Some(m) = self.queue.pop_front() else {
                return;
            };
            if self.cut.contains(&(m.from, m.to)) {
                continue;
            }
            self.delivered.push(m.clone());
            self.node(m.to).step(m);
        }
        panic!("network did not settle");
    }

    /// Delivers queued messages, pumping only the nodes other than the
    /// first leader-to-be (node 1), whose Readys the test drives by hand.
    fn settle_messages_only(&mut self) {
        for _ in 0..10_000 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().filter(|&i| i != 1).collect();
            for id in ids {
                self.pump(id);
            }
            let Some(m) = self.queue.pop_front() else {
                return;
            };
            if !self.cut.contains(&(m.from, m.to)) {
                self.delivered.push(m.clone());
                self.node(m.to).step(m);
            }
        }
        panic!("network did not settle");
    }

    fn tick(&mut self, id: NodeId, n: u32) {
        for _ in 0..n {
            self.node(id).tick();
            self.settle();
        }
    }

    fn tick_all(&mut self, n: u32) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for _ in 0..n {
            for &id in &ids {
                self.node(id).tick();
            }
            self.settle();
        }
    }

    /// Makes `id` campaign right now (as if its timeout fired).
    fn elect(&mut self, id: NodeId) {
        let pre = self.nodes[&id].cfg.pre_vote;
        self.node(id).campaign(pre);
        self.settle();
    }

    fn isolate(&mut self, id: NodeId) {
        for other in self.nodes.keys().copied().collect::<Vec<_>>() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.role() == Role::Leader)
            .map(|n| n.id())
            .collect()
    }

    fn count_delivered(&self, f: impl Fn(&Message) -> bool) -> usize {
        self.delivered.iter().filter(|m| f(m)).count()
    }
}

fn is_append_with_entries(m: &Message) -> bool {
    matches!(&m.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty())
}

#[test]
fn election_5_2_candidate_with_majority_becomes_the_only_leader() {
    let mut net = Net::new(3);
    net.elect(1);
    assert_eq!(net.leaders(), vec![1]);
    for id in [2, 3] {
        assert_eq!(net.nodes[&id].role(), Role::Follower);
        assert_eq!(
            net.nodes[&id].leader(),
            Some(1),
            "followers know the leader"
        );
        assert_eq!(net.nodes[&id].term(), 1);
    }
    // The no-op of the new term commits and is applied everywhere.
    for id in 1..=3 {
        assert_eq!(net.applied[&id].len(), 1);
        assert_eq!(net.applied[&id][0].payload, EntryPayload::Noop);
    }
}

#[test]
fn election_5_2_randomized_timeouts_elect_a_leader_by_ticks_alone() {
    let mut net = Net::new(5);
    net.tick_all(60);
    assert_eq!(net.leaders().len(), 1);
}

#[test]
fn election_5_2_vote_is_granted_once_per_term() {
    let mut node =
        RaftNode::new(Config::new(3, vec![1, 2, 3]), InitialState::default(), 1).unwrap();
    let ask = |from| Message {
        from,
        to: 3,
        term: 1,
        body: MessageBody::RequestVote {
            last_log_index: 0,
            last_log_term: 0,
            transfer: false,
        },
    };
    node.step(ask(1));
    node.step(ask(2));
    node.step(ask(1)); // a retry by the candidate we voted for is granted again
    let rd = node.ready();
    assert_eq!(rd.hard_state.map(|h| (h.term, h.vote)), Some((1, 1)));
    let grants: Vec<(NodeId, bool)> = rd
        .messages
        .iter()
        .map(|m| match m.body {
            MessageBody::RequestVoteResponse { granted } => (m.to, granted),
            ref other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(grants, vec![(1, true), (2, false), (1, true)]);
}

#[test]
fn election_5_4_1_up_to_date_check_refuses_a_stale_candidate() {
    let init = InitialState {
        hard_state: HardState {
            term: 2,
            vote: 0,
            commit: 0,
        },
        entries: log_of(&[1, 2]),
        ..Default::default()
    };
    let mut node = RaftNode::new(Config::new(3, vec![1, 2, 3]), init, 1).unwrap();
    let ask = |from, li, lt| Message {
        from,
        to: 3,
        term: 3,
        body: MessageBody::RequestVote {
            last_log_index: li,
            last_log_term: lt,
            transfer: false,
        },
    };
    node.step(ask(1, 9, 1)); // longer log but older last term: refused
    node.step(ask(2, 2, 2)); // same last term, same length: granted
    let rd = node.ready();
    let grants: Vec<bool> = rd
        .messages
        .iter()
        .map(|m| matches!(m.body, MessageBody::RequestVoteResponse { granted: true }))
        .collect();
    assert_eq!(grants, vec![false, true]);
}

#[test]
fn election_5_1_stale_term_vote_responses_are_not_counted() {
    let mut node = RaftNode::new(
        Config {
            pre_vote: false,
            ..Config::new(1, vec![1, 2, 3])
        },
        InitialState::default(),
        1,
    )
    .unwrap();
    node.campaign(false);
    node.campaign(false); // lost the first election: now term 2
    assert_eq!(node.term(), 2);
    node.step(Message {
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::RequestVoteResponse { granted: true },
    });
    assert_eq!(
        node.role(),
        Role::Candidate,
        "a term-1 grant says nothing about term 2"
    );
    node.step(Message {
        from: 2,
        to: 1,
        term: 2,
        body: MessageBody::RequestVoteResponse { granted: true },
    });
    assert_eq!(node.role(), Role::Leader);
}

#[test]
fn prevote_9_6_partitioned_node_does_not_bump_its_term() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(3);
    net.tick(3, 100);
    assert_eq!(
        net.nodes[&3].term(),
        1,
        "pre-votes failed, so no real election"
    );
    assert_eq!(net.nodes[&3].role(), Role::PreCandidate);
    net.heal();
    net.tick_all(5);
    assert_eq!(
        net.leaders(),
        vec![1],
        "the rejoining node did not depose the leader"
    );
    assert_eq!(net.nodes[&1].term(), 1);
    assert_eq!(net.nodes[&3].leader(), Some(1));
}

#[test]
fn check_quorum_9_6_leader_without_majority_steps_down() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(1);
    let election = net.nodes[&1].cfg.election_ticks;
    net.tick(1, 2 * election);
    assert_eq!(net.nodes[&1].role(), Role::Follower);
    assert_eq!(net.nodes[&1].leader(), None);
    assert!(
        net.node(1).read_index(1).is_err(),
        "no reads without leadership"
    );
}

#[test]
fn check_quorum_9_6_leader_stickiness_ignores_votes_while_leader_is_live() {
    let mut net = Net::new(3);
    net.elect(1);
    // A disruptive candidate at a higher term (say it skipped PreVote).
    net.node(2).step(Message {
        from: 3,
        to: 2,
        term: 9,
        body: MessageBody::RequestVote {
            last_log_index: 99,
            last_log_term: 9,
            transfer: false,
        },
    });
    assert_eq!(
        net.nodes[&2].term(),
        1,
        "heard from the leader recently: ignored"
    );
    assert!(!net.nodes[&2].has_ready(), "not even a rejection is sent");
}

#[test]
fn replication_5_3_conflicting_follower_suffix_is_truncated() {
    // Node 1 (term 4 entry at 3) wins over node 2 whose longer suffix is
    // from an older term and was never committed.
    let mut net = Net::with(
        3,
        |_| {},
        |id| match id {
            1 => InitialState {
                hard_state: HardState {
                    term: 4,
                    ..Default::default()
                },
                entries: log_of(&[1, 1, 4]),
                ..Default::default()
            },
            2 => InitialState {
                hard_state: HardState {
                    term: 4,
                    ..Default::default()
                },
                entries: log_of(&[1, 1, 2, 2, 2]),
                ..Default::default()
            },
            _ => InitialState {
                hard_state: HardState {
                    term: 4,
                    ..Default::default()
                },
                entries: log_of(&[1, 1]),
                ..Default::default()
            },
        },
    );
    net.elect(1);
    assert_eq!(net.leaders(), vec![1]);
    let leader_log = net.stores[&1].entries().to_vec();
    assert_eq!(leader_log.len(), 4, "3 entries + the no-op");
    for id in [2, 3] {
        assert_eq!(net.stores[&id].entries(), &leader_log[..], "node {id}");
    }
}

#[test]
fn replication_5_3_fast_backtracking_takes_few_round_trips() {
    // The follower holds 200 entries of a term the leader never saw.
    let mut leader_terms = vec![1];
    leader_terms.extend(std::iter::repeat_n(3, 100));
    let mut follower_terms = vec![1];
    follower_terms.extend(std::iter::repeat_n(2, 200));
    let mut net = Net::with(
        3,
        |_| {},
        |id| {
            let terms = if id == 2 {
                &follower_terms
            } else {
                &leader_terms
            };
            InitialState {
                hard_state: HardState {
                    term: 3,
                    ..Default::default()
                },
                entries: log_of(terms),
                ..Default::default()
            }
        },
    );
    net.elect(1);
    assert_eq!(net.leaders(), vec![1]);
    let rejections = net.count_delivered(|m| {
        m.from == 2
            && matches!(
                m.body,
                MessageBody::AppendEntriesResponse { success: false, .. }
            )
    });
    assert!(
        rejections <= 2,
        "{rejections} rejections: one per entry would be 200"
    );
    assert_eq!(net.stores[&2].entries(), net.stores[&1].entries());
}

#[test]
fn commit_5_4_2_figure_8_previous_term_entry_is_not_committed_by_counting() {
    // Node 1 becomes leader of term 4 holding entry 2 from term 2, which a
    // majority (nodes 1 and 2) stores. Counting replicas must not commit it.
    let init = |terms: &[u64]| InitialState {
        hard_state: HardState {
            term: 3,
            ..Default::default()
        },
        entries: log_of(terms),
        ..Default::default()
    };
    let mut node = RaftNode::new(
        Config {
            pre_vote: false,
            ..Config::new(1, vec![1, 2, 3])
        },
        init(&[1, 2]),
        1,
    )
    .unwrap();
    node.campaign(false);
    for from in [2, 3] {
        node.step(Message {
            from,
            to: 1,
            term: 4,
            body: MessageBody::RequestVoteResponse { granted: true },
        });
    }
    assert_eq!(node.role(), Role::Leader);
    let rd = node.ready();
    assert_eq!(rd.entries.last().map(|e| (e.index, e.term)), Some((3, 4)));
    node.advance();
    let ack = |match_index| Message {
        from: 2,
        to: 1,
        term: 4,
        body: MessageBody::AppendEntriesResponse {
            success: true,
            match_index,
            conflict_term: 0,
            conflict_index: 0,
            read_ctx: 0,
        },
    };
    node.step(ack(2));
    assert_eq!(
        node.commit_index(),
        0,
        "entry 2 is from term 2: not committable by counting"
    );
    node.step(ack(3));
    assert_eq!(
        node.commit_index(),
        3,
        "the no-op of term 4 commits, and entry 2 with it"
    );
}

#[test]
fn commit_leader_counts_its_own_entries_only_once_durable() {
    let mut net = Net::new(3);
    net.elect(1);
    net.cut.insert((1, 3));
    net.node(1).propose(vec![cmd("x")]).unwrap();
    // Take the leader's Ready (entry 3 to persist) but do not advance yet.
    let rd = net.node(1).ready();
    assert_eq!(rd.entries.len(), 1);
    let idx = rd.entries[0].index;
    assert!(
        rd.messages.is_empty() && rd.early_messages.iter().all(is_append_with_entries),
        "the leader's appends may go out before its own fsync"
    );
    net.queue.extend(rd.early_messages);
    net.settle(); // node 2 stores and acknowledges
    assert!(
        net.nodes[&1].commit_index() < idx,
        "1 durable copy out of 3 is not a majority"
    );
    net.node(1).advance();
    assert_eq!(
        net.nodes[&1].commit_index(),
        idx,
        "now the leader's copy counts"
    );
}

#[test]
fn read_index_6_4_needs_a_heartbeat_round() {
    let mut net = Net::new(3);
    net.elect(1);
    let commit = net.nodes[&1].commit_index();
    net.cut.insert((2, 1));
    net.cut.insert((3, 1));
    net.node(1).read_index(77).unwrap();
    net.settle();
    net.tick(1, 3);
    assert!(net.reads[&1].is_empty(), "no majority answered: no read");
    net.heal();
    net.tick(1, 1);
    assert_eq!(
        net.reads[&1],
        vec![ReadState {
            ctx: 77,
            index: commit
        }]
    );
}

#[test]
fn read_index_6_4_waits_for_the_leaders_noop_to_commit() {
    let mut net = Net::new(3);
    net.cut.insert((2, 1));
    net.cut.insert((3, 1));
    // Win the election by hand, with the no-op unacknowledged.
    net.node(1).campaign(false);
    for from in [2, 3] {
        net.node(1).step(Message {
            from,
            to: 1,
            term: 1,
            body: MessageBody::RequestVoteResponse { granted: true },
        });
    }
    net.settle();
    assert_eq!(net.nodes[&1].role(), Role::Leader);
    net.node(1).read_index(5).unwrap();
    net.settle();
    let with_ctx = net.count_delivered(
        |m| matches!(m.body, MessageBody::AppendEntries { read_ctx, .. } if read_ctx > 0),
    );
    assert_eq!(with_ctx, 0, "no round starts before the no-op commits");
    net.heal();
    net.tick(1, 2);
    assert_eq!(net.reads[&1].len(), 1);
    assert!(net.reads[&1][0].index >= 1, "the read observes the no-op");
}

#[test]
fn replication_batching_puts_many_proposals_in_one_append() {
    let mut net = Net::new(3);
    net.elect(1);
    let before = net.count_delivered(|m| m.from == 1 && is_append_with_entries(m));
    for k in 0..50 {
        net.node(1).propose(vec![cmd(&format!("a{k}"))]).unwrap();
    }
    net.node(1)
        .propose((0..50).map(|k| cmd(&format!("b{k}"))).collect())
        .unwrap();
    net.settle();
    let appends: Vec<&Message> = net.delivered[..]
        .iter()
        .filter(|m| m.from == 1 && is_append_with_entries(m))
        .skip(before)
        .collect();
    assert_eq!(appends.len(), 2, "one AppendEntries per follower");
    for m in appends {
        let MessageBody::AppendEntries { entries, .. } = &m.body else {
            unreachable!()
        };
        assert_eq!(entries.len(), 100);
    }
    assert_eq!(net.applied[&3].len(), 101);
}

#[test]
fn replication_inflight_window_bounds_unacknowledged_appends() {
    let mut net = Net::with(
        3,
        |c| {
            c.max_inflight = 3;
            c.max_entries_per_msg = 2;
        },
        |_| InitialState::default(),
    );
    net.elect(1);
    net.cut.insert((2, 1));
    net.cut.insert((3, 1));
    let before = net.count_delivered(|m| m.from == 1 && m.to == 2 && is_append_with_entries(m));
    net.node(1)
        .propose((0..40).map(|k| cmd(&format!("{k}"))).collect())
        .unwrap();
    net.settle();
    let sent = net.count_delivered(|m| m.from == 1 && m.to == 2 && is_append_with_entries(m));
    assert_eq!(
        sent - before,
        3,
        "window of 3 messages, no acknowledgements"
    );
    net.heal();
    // The acknowledgements were lost: once heartbeat replies show no
    // progress for a while, the leader probes and refills the window.
    net.tick(1, 10);
    assert_eq!(net.stores[&2].last_index(), 41, "no-op + 40 entries");
}

#[test]
fn replication_single_node_cluster_commits_alone() {
    let mut net = Net::new(1);
    net.tick(1, 25);
    assert_eq!(net.leaders(), vec![1]);
    let out = net.node(1).propose(vec![cmd("solo")]).unwrap();
    net.settle();
    assert_eq!(net.nodes[&1].commit_index(), out.first_index);
    net.node(1).read_index(3).unwrap();
    net.settle();
    assert_eq!(net.reads[&1].len(), 1);
}

#[test]
fn snapshot_7_lagging_follower_receives_install_snapshot() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(3);
    for k in 0..20 {
        net.node(1).propose(vec![cmd(&format!("{k}"))]).unwrap();
    }
    net.settle();
    let applied = net.nodes[&1].applied_index();
    let meta = SnapshotMeta {
        index: applied,
        term: net.nodes[&1].term_at(applied).unwrap(),
    };
    net.node(1).compact(meta).unwrap();
    assert_eq!(net.nodes[&1].status().first_index, applied + 1);
    net.heal();
    // The append carrying entries 2..=21 was lost; heartbeat replies
    // without progress make the leader probe, and the probe finds the
    // entries compacted.
    net.tick(1, 8);
    let snaps = net.count_delivered(|m| matches!(m.body, MessageBody::InstallSnapshot { .. }));
    assert_eq!(snaps, 1);
    assert_eq!(
        net.stores[&3].snapshot(),
        meta,
        "follower reset its log to the snapshot"
    );
    net.node(1).report_snapshot(3, true);
    net.node(1).propose(vec![cmd("after")]).unwrap();
    net.tick(1, 2);
    assert_eq!(net.stores[&3].last_index(), net.stores[&1].last_index());
    assert!(net
        .node(1)
        .compact(SnapshotMeta {
            index: 999,
            term: 1
        })
        .is_err());
}

#[test]
fn restart_hands_out_committed_but_unapplied_entries_again() {
    let init = InitialState {
        hard_state: HardState {
            term: 2,
            vote: 1,
            commit: 3,
        },
        entries: log_of(&[1, 2, 2, 2]),
        applied: 1,
        ..Default::default()
    };
    let mut node = RaftNode::new(Config::new(1, vec![1, 2, 3]), init, 9).unwrap();
    assert!(node.has_ready());
    let rd = node.ready();
    let idx: Vec<u64> = rd.committed_entries.iter().map(|e| e.index).collect();
    assert_eq!(idx, vec![2, 3]);
    assert!(
        rd.entries.is_empty(),
        "recovered entries are already durable"
    );
    node.advance();
    assert_eq!(node.applied_index(), 3);
}

#[test]
fn new_rejects_inconsistent_state_and_config() {
    let gap = InitialState {
        hard_state: HardState {
            term: 1,
            ..Default::default()
        },
        entries: vec![ent(1, 1), ent(3, 1)],
        ..Default::default()
    };
    assert!(matches!(
        RaftNode::new(Config::new(1, vec![1]), gap, 0),
        Err(RaftError::InvalidState(_))
    ));
    let beyond = InitialState {
        hard_state: HardState {
            term: 1,
            ..Default::default()
        },
        entries: vec![ent(1, 1)],
        applied: 5,
        ..Default::default()
    };
    assert!(RaftNode::new(Config::new(1, vec![1]), beyond, 0).is_err());
    assert!(matches!(
        RaftNode::new(Config::new(4, vec![1, 2]), InitialState::default(), 0),
        Err(RaftError::InvalidConfig(_))
    ));
    let mut cfg = Config::new(1, vec![1]);
    cfg.heartbeat_ticks = cfg.election_ticks;
    assert!(RaftNode::new(cfg, InitialState::default(), 0).is_err());
}

#[test]
fn step_ignores_malformed_and_misaddressed_messages() {
    let mut net = Net::new(3);
    net.elect(1);
    let before = net.stores[&2].last_index();
    // Not contiguous, and an entry from a future term.
    net.node(2).step(Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::AppendEntries {
            prev_log_index: before,
            prev_log_term: 1,
            entries: vec![ent(before + 2, 1), ent(before + 3, 7)],
            leader_commit: u64::MAX,
            read_ctx: 0,
        },
    });
    net.node(2).step(Message {
        from: 9,
        to: 2,
        term: 50,
        body: MessageBody::TimeoutNow,
    });
    net.settle();
    assert_eq!(net.stores[&2].last_index(), before);
    assert_eq!(net.nodes[&2].term(), 1);
    assert_eq!(net.leaders(), vec![1]);
}

#[test]
fn proposals_and_reads_on_a_follower_name_the_leader() {
    let mut net = Net::new(3);
    net.elect(1);
    assert_eq!(
        net.node(2).propose(vec![cmd("x")]),
        Err(RaftError::NotLeader { leader: Some(1) })
    );
    assert_eq!(
        net.node(3).read_index(1),
        Err(RaftError::NotLeader { leader: Some(1) })
    );
}

#[test]
fn replication_snapshot_reply_frees_the_inflight_window() {
    // Regression (found by the simulation, seed 3092): a peer in Replicate
    // with a window of 1 acknowledged its in-flight append through an
    // InstallSnapshot reply; the window must open again.
    let mut net = Net::with(3, |c| c.max_inflight = 1, |_| InitialState::default());
    net.elect(1);
    net.cut.insert((2, 1));
    net.node(1).propose(vec![cmd("x")]).unwrap();
    net.settle(); // entry 2 is in flight to node 2, unacknowledged
    let last = net.nodes[&1].last_index();
    net.node(1).step(Message {
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::InstallSnapshotResponse {
            last_index: last,
            success: true,
        },
    });
    net.heal();
    let before = net.count_delivered(|m| m.from == 1 && m.to == 2 && is_append_with_entries(m));
    net.node(1).propose(vec![cmd("y")]).unwrap();
    net.settle();
    let after = net.count_delivered(|m| m.from == 1 && m.to == 2 && is_append_with_entries(m));
    assert_eq!(after, before + 1, "the new entry goes out at once");
    assert_eq!(net.stores[&2].last_index(), last + 1);
}

#[test]
fn replication_follower_whose_log_went_backwards_is_caught_up_by_the_same_leader() {
    let mut net = Net::new(3);
    net.elect(1);
    for k in 0..10 {
        net.node(1).propose(vec![cmd(&format!("{k}"))]).unwrap();
    }
    net.settle();
    let applied = net.nodes[&1].applied_index();
    assert_eq!(net.stores[&3].last_index(), net.stores[&1].last_index());
    let term = net.nodes[&1].term_at(applied).unwrap();
    net.node(1)
        .compact(SnapshotMeta {
            index: applied,
            term,
        })
        .unwrap();
    // Node 3 loses its storage and comes back empty under the same id,
    // while node 1 stays leader with node 3's old match index on record.
    let cfg = Config::new(3, vec![1, 2, 3]);
    net.nodes
        .insert(3, RaftNode::new(cfg, InitialState::default(), 99).unwrap());
    net.stores.insert(3, MemLogStore::new());
    net.node(1).propose(vec![cmd("after wipe")]).unwrap();
    net.settle();
    net.tick(1, 4);
    assert_eq!(net.leaders(), vec![1], "no election was needed");
    let snaps =
        net.count_delivered(|m| m.to == 3 && matches!(m.body, MessageBody::InstallSnapshot { .. }));
    assert_eq!(
        snaps, 1,
        "the leader fell back to a snapshot for the wiped peer"
    );
    net.node(1).report_snapshot(3, true);
    net.tick(1, 2);
    assert_eq!(net.stores[&3].last_index(), net.stores[&1].last_index());
}

#[test]
fn ready_apply_before_persist_only_for_entries_durable_earlier() {
    let rd = |committed: &[u64], entries: &[u64]| Ready {
        committed_entries: committed.iter().map(|&i| ent(i, 1)).collect(),
        entries: entries.iter().map(|&i| ent(i, 1)).collect(),
        ..Ready::default()
    };
    assert!(rd(&[4, 5], &[]).can_apply_before_persist());
    assert!(rd(&[4, 5], &[6, 7]).can_apply_before_persist());
    assert!(
        !rd(&[4, 5, 6], &[6, 7]).can_apply_before_persist(),
        "entry 6 is not durable yet"
    );
    assert!(!rd(&[], &[6]).can_apply_before_persist());
    let mut with_snapshot = rd(&[4], &[]);
    with_snapshot.snapshot = Some(SnapshotMeta { index: 3, term: 1 });
    assert!(!with_snapshot.can_apply_before_persist());

    // In a live cluster: once the followers acknowledge, the leader's next
    // Ready carries the committed entry together with a new batch to persist.
    let mut net = Net::new(3);
    net.elect(1);
    net.node(1).propose(vec![cmd("a")]).unwrap();
    let rd1 = net.node(1).ready();
    net.stores
        .get_mut(&1)
        .unwrap()
        .save(rd1.hard_state.as_ref(), &rd1.entries)
        .unwrap();
    net.queue.extend(rd1.early_messages);
    net.node(1).advance();
    net.settle_messages_only();
    net.node(1).propose(vec![cmd("b")]).unwrap();
    let rd2 = net.node(1).ready();
    assert_eq!(rd2.committed_entries.len(), 1);
    assert_eq!(rd2.entries.len(), 1);
    assert!(rd2.can_apply_before_persist());
}

#[test]
fn entry_payload_encodes_as_a_byte_string_with_the_same_layout_as_a_byte_sequence() {
    // `serde_bytes` must not change the bincode layout of stored records
    // and RPCs: a length prefix, then the bytes.
    #[derive(serde::Serialize)]
    enum Plain {
        #[allow(dead_code)]
        Noop,
        Command(Vec<u8>),
    }
    let cfg = bincode::config::standard();
    let bytes: Vec<u8> = (0..=255u8).chain(0..40).collect();
    let fast = bincode::serde::encode_to_vec(EntryPayload::Command(bytes.clone()), cfg).unwrap();
    let plain = bincode::serde::encode_to_vec(Plain::Command(bytes.clone()), cfg).unwrap();
    assert_eq!(fast, plain);
    let (back, _): (EntryPayload, usize) = bincode::serde::decode_from_slice(&plain, cfg).unwrap();
    assert_eq!(back, EntryPayload::Command(bytes));
}

#[test]
fn transfer_3_10_up_to_date_target_takes_over_without_losing_entries() {
    let mut net = Net::new(3);
    net.elect(1);
    for k in 0..5 {
        net.node(1).propose(vec![cmd(&format!("{k}"))]).unwrap();
    }
    net.settle();
    let (term, committed) = (net.nodes[&1].term(), net.nodes[&1].commit_index());
    assert_eq!(net.node(1).transfer_leadership(Some(2)).unwrap(), 2);
    net.settle();
    assert_eq!(
        net.leaders(),
        vec![2],
        "node 2 won at once, no timeout needed"
    );
    assert_eq!(net.nodes[&2].term(), term + 1);
    assert!(
        net.nodes[&2].commit_index() > committed,
        "its no-op commits"
    );
    assert_eq!(net.nodes[&1].role(), Role::Follower);
    assert_eq!(
        net.count_delivered(|m| matches!(m.body, MessageBody::TimeoutNow)),
        1
    );
    let out = net.node(2).propose(vec![cmd("after")]).unwrap();
    net.settle();
    assert_eq!(net.nodes[&1].commit_index(), out.first_index);
}

#[test]
fn transfer_3_10_lagging_target_catches_up_first_and_proposals_wait() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(3);
    for k in 0..5 {
        net.node(1).propose(vec![cmd(&format!("{k}"))]).unwrap();
    }
    net.settle();
    net.heal();
    net.node(1).transfer_leadership(Some(3)).unwrap();
    assert!(matches!(
        net.node(1).propose(vec![cmd("during")]),
        Err(RaftError::TransferInProgress)
    ));
    // Heartbeats, then a probe (its earlier appends were lost) bring node 3
    // up to date within the transfer's timeout; then TimeoutNow.
    let ticks = net.nodes[&1].cfg.election_ticks - 1;
    net.tick(1, ticks);
    assert_eq!(net.leaders(), vec![3]);
    assert_eq!(net.stores[&3].last_index(), net.stores[&1].last_index());
}

#[test]
fn transfer_3_10_to_an_unreachable_target_is_abandoned_after_a_timeout() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(3);
    net.cut.remove(&(1, 2));
    net.cut.remove(&(2, 1));
    net.node(1).transfer_leadership(Some(3)).unwrap();
    assert_eq!(net.nodes[&1].transfer_target(), Some(3));
    let ticks = net.nodes[&1].cfg.election_ticks;
    net.tick(1, ticks);
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(net.nodes[&1].transfer_target(), None);
    assert!(net.node(1).propose(vec![cmd("again")]).is_ok());
    assert!(
        net.node(1).transfer_leadership(Some(9)).is_err(),
        "not a peer"
    );
}
